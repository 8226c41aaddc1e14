"""cluster.deps.Confirmed: the route dependency of irreversible actions, on a FastAPI app of its own with the
control plane's error handler."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from cluster.app import platform_error
from cluster.deps import Confirmed
from serve_apps.errors import PlatformError

DeleteConfirmed = Confirmed("DELETE", "Deleting X")  # as the routers use it: a module-level alias
DisableConfirmed = Confirmed("YES", "Disabling X")


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    app.add_exception_handler(PlatformError, platform_error)

    @app.delete("/things/{name}", status_code=204)
    def delete_thing(name: str, _: DeleteConfirmed) -> None:
        return None

    @app.post("/things/{name}/disable")
    def disable_thing(name: str, _: DisableConfirmed) -> dict:
        return {"name": name, "disabled": True}

    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("params", [{}, {"confirm": ""}, {"confirm": "delete"}, {"confirm": "YES"},
                                    {"confirm": "DELETE!"}])
def test_the_wrong_word_is_refused(client, params):
    refused = client.delete("/things/a", params=params)
    assert (refused.status_code, refused.json()) == (400, {
        "error_code": "MaaS.0400", "error_msg": "Deleting X needs the confirmation text DELETE."})


def test_the_word_lets_the_route_run(client):
    assert client.delete("/things/a", params={"confirm": "DELETE"}).status_code == 204
    assert client.post("/things/a/disable", params={"confirm": "YES"}).json() == {"name": "a", "disabled": True}
    refused = client.post("/things/a/disable", params={"confirm": "DELETE"})  # each route has its own word
    assert refused.json() == {"error_code": "MaaS.0400", "error_msg": "Disabling X needs the confirmation text YES."}


def test_the_word_is_a_documented_query_parameter(client):
    [parameter] = client.get("/openapi.json").json()["paths"]["/things/{name}"]["delete"]["parameters"][1:]
    assert (parameter["name"], parameter["in"], parameter["required"]) == ("confirm", "query", False)
    assert parameter["description"] == "The confirmation text DELETE."
