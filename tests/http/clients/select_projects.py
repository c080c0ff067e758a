# One API key for every request of a client. postgrest-py sends `schema` as
# Accept-Profile and Content-Profile ("public" unless told): name the schema
# the server exposes.
import json
import os

from postgrest import APIError, SyncPostgrestClient

api = SyncPostgrestClient(os.environ["PGRST_URL"], schema="api",
                          headers={"x-api-key": os.environ["API_KEY"]})
try:
    res = api.from_("projects").select("name").execute()
    print(json.dumps({"data": res.data}))
except APIError as e:  # code, message, hint and details; no HTTP status
    print(json.dumps({"error": e.json()}))
