# A rate-limited key: the refused request raises APIError with the body's
# code PT429. postgrest-py neither retries a 429 nor puts the response's
# headers in the error; an httpx client of your own reads Retry-After.
import json
import os

import httpx
from postgrest import APIError, SyncPostgrestClient

responses = []


def record(response: httpx.Response) -> None:
    responses.append({"status": response.status_code, "retryAfter": response.headers.get("retry-after")})


api = SyncPostgrestClient(os.environ["PGRST_URL"], schema="api",
                          headers={"x-api-key": os.environ["API_KEY"]},
                          http_client=httpx.Client(event_hooks={"response": [record]}))
results = []
for _ in range(3):
    try:
        results.append({"data": api.from_("projects").select("name").execute().data})
    except APIError as e:
        results.append({"error": e.json()})
print(json.dumps({"results": results, "responses": responses}))
