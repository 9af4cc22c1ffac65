from __future__ import annotations

import json

from api.openapi_spec import spec, spec_json
from tests.conftest import REPO, Gateway


def test_committed_spec_matches_the_app() -> None:
    committed = (REPO / "openapi" / "openapi.json").read_text()
    assert committed == spec_json(), "openapi/openapi.json is stale: run `make openapi`"


def test_every_v1_route_documents_its_errors() -> None:
    for path, item in spec()["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in item.items():
            codes = {int(c) for c in op["responses"] if c.isdigit() and int(c) >= 400}
            assert codes, f"{method.upper()} {path} documents no error responses"
            if path != "/v1/oauth/callback" and not path.startswith("/v1/admin"):
                assert 401 in codes, f"{method.upper()} {path} does not document 401"


def test_money_is_a_string_in_the_schema() -> None:
    schemas = spec()["components"]["schemas"]
    line = schemas["JournalLine"]["properties"]["debit"]
    assert json.dumps(line).count('"string"') >= 1


async def test_docs_are_served_without_a_cdn(gateway: Gateway) -> None:
    r = await gateway.client.get("/docs")
    assert r.status_code == 200
    assert "/docs-static/swagger-ui-bundle.js" in r.text and "cdn" not in r.text.lower()
    js = await gateway.client.get("/docs-static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert (await gateway.client.get("/openapi.json")).json()["components"]["securitySchemes"]["apiKey"]
