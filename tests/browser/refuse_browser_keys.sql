-- PostgREST's db-pre-request becomes app_private.pre_request: it refuses a
-- secret key that a browser sent, then authenticates as before. app_private
-- is not in db-schemas, so no request can call it as /rpc/pre_request.
CREATE SCHEMA app_private;
GRANT USAGE ON SCHEMA app_private TO anon, authenticated, api_key_user;
CREATE FUNCTION app_private.pre_request() RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
    h json := nullif(current_setting('request.headers', true), '')::json;
BEGIN
    -- Origin (cross-origin requests, and same-origin ones but GET and HEAD)
    -- and Sec-Fetch-Site (every request over HTTPS or to localhost) are
    -- set by browsers only: a page's script cannot set or remove them
    IF h ->> 'x-api-key' IS NOT NULL
       AND (h ->> 'origin' IS NOT NULL OR h ->> 'sec-fetch-site' IS NOT NULL) THEN
        RAISE SQLSTATE 'PT401' USING
            MESSAGE = 'secret API keys are not accepted from browsers',
            HINT = 'a web page uses a public key (pk_…); keep secret keys on servers';
    END IF;
    PERFORM apikeys.authenticate();
END
$$;
