"""Fetch every expense with the official Fyle SDK (`fyle` on PyPI), the way its
README shows: `Platform(...)` then `v1.admin.expenses.list_all(...)`.

Fetch only (the SDK has no writer). Environment: FYLE_ACCOUNTS_URL,
FYLE_CLUSTER_URL, FYLE_CLIENT_ID, FYLE_CLIENT_SECRET, FYLE_REFRESH_TOKEN.
Prints one JSON line: records and pages fetched.
"""
import json
import os

from fyle.platform import Platform

platform = Platform(
    server_url=os.environ["FYLE_CLUSTER_URL"].rstrip("/") + "/platform/v1",
    token_url=os.environ["FYLE_ACCOUNTS_URL"].rstrip("/") + "/oauth/token",
    client_id=os.environ["FYLE_CLIENT_ID"],
    client_secret=os.environ["FYLE_CLIENT_SECRET"],
    refresh_token=os.environ["FYLE_REFRESH_TOKEN"],
)
records = pages = 0
for page in platform.v1.admin.expenses.list_all({"order": "updated_at.asc,id.asc"}):
    pages += 1
    records += len(page["data"])
print(json.dumps({"records": records, "pages": pages}))
