# An insert with a key: RLS checks the key's workspace and scope, and the
# trigger stamps created_by with the key's owner, whatever the client sends.
import json
import os

from postgrest import APIError, SyncPostgrestClient

api = SyncPostgrestClient(os.environ["PGRST_URL"], schema="api",
                          headers={"x-api-key": os.environ["API_KEY"]})
row = {"workspace_id": os.environ["WORKSPACE_ID"], "name": os.environ["NAME"], "created_by": "mallory"}
try:
    res = api.from_("projects").insert(row).execute()  # returns the row (return=representation)
    print(json.dumps({"data": res.data}))
except APIError as e:
    print(json.dumps({"error": e.json()}))
