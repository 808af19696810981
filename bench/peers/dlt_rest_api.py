"""Export every expense with dlt's `rest_api` source to local files.

Usage: dlt_rest_api.py csv|parquet OUT_DIR
dlt has no Fyle OAuth flow, so the access token is fetched once with the
refresh-token grant (a JSON body, as Fyle's SDK sends it) and passed as a
bearer token; pages are read with dlt's
offset paginator (200 per page, stopping at the response's `count`), the
same order the exporter uses. Environment as for fyle_sdk.py.
Prints one JSON line: records loaded into the `expenses` table.
"""
import json
import os
import sys

import dlt
import requests
from dlt.sources.rest_api import rest_api_source

fmt, out = sys.argv[1], os.path.abspath(sys.argv[2])
accounts = os.environ["FYLE_ACCOUNTS_URL"].rstrip("/")
cluster = os.environ["FYLE_CLUSTER_URL"].rstrip("/")
token = requests.post(
    accounts + "/oauth/token",
    json={
        "grant_type": "refresh_token",
        "refresh_token": os.environ["FYLE_REFRESH_TOKEN"],
        "client_id": os.environ["FYLE_CLIENT_ID"],
        "client_secret": os.environ["FYLE_CLIENT_SECRET"],
    },
    timeout=30,
).json()["access_token"]

source = rest_api_source(
    {
        "client": {
            "base_url": cluster + "/platform/v1/",
            "auth": {"type": "bearer", "token": token},
            "paginator": {
                "type": "offset",
                "limit": 200,
                "offset_param": "offset",
                "limit_param": "limit",
                "total_path": "count",
            },
        },
        "resources": [
            {
                "name": "expenses",
                "endpoint": {
                    "path": "admin/expenses",
                    "params": {"order": "updated_at.asc,id.asc"},
                    "data_selector": "data",
                },
            }
        ],
    }
)
pipeline = dlt.pipeline(
    pipeline_name=f"bench_{fmt}",
    pipelines_dir=os.path.join(out, ".dlt"),
    destination=dlt.destinations.filesystem(bucket_url=os.path.join(out, "data")),
    dataset_name="fyle",
    progress=None,
)
pipeline.run(source, loader_file_format=fmt)

# Counted by reading the `expenses` table's files back, not from dlt's trace.
table = os.path.join(out, "data", "fyle", "expenses")
rows = 0
for name in sorted(os.listdir(table)):
    path = os.path.join(table, name)
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows += pq.read_metadata(path).num_rows
    elif name.endswith(".csv") or name.endswith(".csv.gz"):
        import csv
        import gzip

        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", newline="") as f:
            rows += sum(1 for _ in csv.reader(f)) - 1
print(json.dumps({"records": rows}))
