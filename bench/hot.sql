-- One hot key (bench.tokens i = 1) hammered by every client: check_key
-- admits exactly its rate limit per window and refuses the rest.
SELECT code FROM bench.tokens t, apikeys.check_key(t.token) WHERE t.i = 1;
