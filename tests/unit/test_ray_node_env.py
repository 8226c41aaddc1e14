"""serve_apps.settings.ray_node_env: the environment every Ray node of the platform starts with."""

from serve_apps.settings import RAY_NODE_ENV, ray_node_env


def test_the_platforms_settings_are_added_to_an_environment_that_has_none():
    env = ray_node_env({"PATH": "/bin"})
    assert env == {"PATH": "/bin", **RAY_NODE_ENV}
    assert env["RAY_SERVE_PROXY_USE_GRPC"] == "1" and env["FORWARDED_ALLOW_IPS"] == ""


def test_an_operator_may_turn_the_grpc_path_off_but_not_the_forwarded_header_rule():
    # FORWARDED_ALLOW_IPS=* would let the proxy's uvicorn rewrite the peer from a caller's own X-Forwarded-For:
    # every usage record's client IP would be whatever the caller wrote.
    env = ray_node_env({"RAY_SERVE_PROXY_USE_GRPC": "0", "FORWARDED_ALLOW_IPS": "*"})
    assert env["RAY_SERVE_PROXY_USE_GRPC"] == "0" and env["FORWARDED_ALLOW_IPS"] == ""


def test_serve_runs_a_replicas_code_and_its_router_on_one_loop_unless_told_otherwise():
    env = ray_node_env({})
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert env["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "0" and env["RAY_SERVE_FREEZE_GC_ON_STARTUP"] == "1"
    assert ray_node_env({"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1"})[
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "1"
