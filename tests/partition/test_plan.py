"""The partition plan as data: the kube plan's routing, URL assignment, plan files, kube-apiserver flags."""

from __future__ import annotations

import pytest

from kvstore.partition.plan import (
    PlanError,
    assign_urls,
    kube_apiserver_flags,
    kube_plan,
    load_plan,
    parse_plan_toml,
    resource_key_prefix,
)


def test_kube_plan_routes_every_resource_as_kube_apiserver_keys_it() -> None:
    plan = kube_plan()
    cases = {
        b"/registry/pods/default/web-0": "pods",
        b"/registry/minions/node-1": "nodes",  # nodes live under "minions" in etcd
        b"/registry/events/default/web-0.17a": "events",  # core and events.k8s.io events share it
        b"/registry/leases/kube-node-lease/node-1": "leases",
        b"/registry/leasecandidates/kube-system/x": "default",  # coordination.k8s.io, but not leases
        b"/registry/podtemplates/default/t": "default",  # not a pod: the trailing '/' matters
        b"/registry/services/specs/default/kubernetes": "default",
        b"/registry/apiextensions.k8s.io/customresourcedefinitions/x": "default",
        b"/registry/example.com/widgets/default/w": "default",  # a CRD's objects
        b"/registry/masterleases/10.0.0.1": "default",
        b"unrelated": "default",
    }
    for key, want in cases.items():
        assert plan.partition_for(key).name == want, key


def test_resource_prefixes_follow_kube_apiserver() -> None:
    assert resource_key_prefix("/nodes") == b"/registry/minions/"
    assert resource_key_prefix("events.k8s.io/events") == b"/registry/events/"
    assert resource_key_prefix("/services") == b"/registry/services/specs/"
    assert resource_key_prefix("extensions/ingresses") == b"/registry/ingress/"
    assert resource_key_prefix("apps/deployments") == b"/registry/deployments/"
    assert resource_key_prefix("coordination.k8s.io/leases", "/custom") == b"/custom/leases/"


def test_default_keeps_the_port_and_the_others_take_the_next_ones() -> None:
    plan = assign_urls(kube_plan(), ["http://127.0.0.1:2379"])
    assert [(p.name, p.client_urls) for p in plan.partitions] == [
        ("default", ("http://127.0.0.1:2379",)),
        ("events", ("http://127.0.0.1:2380",)),
        ("leases", ("http://127.0.0.1:2381",)),
        ("pods", ("http://127.0.0.1:2382",)),
        ("nodes", ("http://127.0.0.1:2383",)),
    ]


def parse_flags(lines: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """kube-apiserver's own parsing (options/etcd.go Validate + default_storage_factory_builder.go)."""
    assert len(lines) == 2
    servers_flag, overrides_flag = lines
    assert servers_flag.startswith("--etcd-servers=") and overrides_flag.startswith("--etcd-servers-overrides=")
    servers = servers_flag.split("=", 1)[1].split(",")
    overrides: dict[str, list[str]] = {}
    for override in overrides_flag.split("=", 1)[1].split(","):
        tokens = override.split("#")
        assert len(tokens) == 2, override
        assert len(tokens[0].split("/")) == 2, override
        overrides[tokens[0]] = tokens[1].split(";")
    return servers, overrides


def test_kube_flags_name_every_partition_and_every_cohabiting_resource() -> None:
    plan = assign_urls(kube_plan(), ["http://10.0.0.1:3000", "http://10.0.0.2:3000"])
    servers, overrides = parse_flags(kube_apiserver_flags(plan))
    assert servers == ["http://10.0.0.1:3000", "http://10.0.0.2:3000"]
    ev = ["http://10.0.0.1:3001", "http://10.0.0.2:3001"]
    assert overrides == {
        "/events": ev,
        "events.k8s.io/events": ev,
        "coordination.k8s.io/leases": ["http://10.0.0.1:3002", "http://10.0.0.2:3002"],
        "/pods": ["http://10.0.0.1:3003", "http://10.0.0.2:3003"],
        "/nodes": ["http://10.0.0.1:3004", "http://10.0.0.2:3004"],
    }


PLAN_FILE = """
name = "two"
[[partition]]
name = "default"
[[partition]]
name = "hot"
resources = ["/pods", "coordination.k8s.io/leases"]
prefixes = ["/app/hot/"]
log = "hot-log"
client_urls = ["http://127.0.0.1:4000"]
quota_backend_bytes = 1048576
"""


def test_plan_file() -> None:
    plan = assign_urls(parse_plan_toml(PLAN_FILE, "two.toml"), ["http://127.0.0.1:2379"])
    hot = plan.get("hot")
    assert (hot.log_name, hot.client_urls, hot.quota_backend_bytes) == ("hot-log", ("http://127.0.0.1:4000",), 1 << 20)
    assert plan.partition_for(b"/app/hot/x").name == "hot"
    assert plan.partition_for(b"/registry/leases/a/b").name == "hot"
    assert plan.default.log_name == "default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[partition]]\nname = 'events'\nresources = ['/events']", "first partition must be 'default'"),
        ("[[partition]]\nname='default'\n[[partition]]\nname='a'\nresources=['pods']", "expected group/resource"),
        ("[[partition]]\nname='default'\n[[partition]]\nname='a'", "owns no resources"),
        (
            "[[partition]]\nname='default'\n[[partition]]\nname='a'\nresources=['/events']\n"
            "[[partition]]\nname='b'\nresources=['events.k8s.io/events']",
            "cohabiting",
        ),
        ("[[partition]]\nname='default'\n[[partition]]\nname='A'\nresources=['/pods']", "lower-case"),
        ("[[partition]]\nname='default'\nquota_backend_bytes='1G'", "must be an integer"),
        ("[[partition]]\nname='default'\ncolour=1", "unknown keys"),
        ("[[partition]\n", "<plan>"),
        (
            "[[partition]]\nname='default'\n[[partition]]\nname='a'\nresources=['/pods']\n"
            "client_urls=['http://127.0.0.1:2379']",
            "both listen",
        ),
    ],
)
def test_bad_plans_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        assign_urls(parse_plan_toml(text), ["http://127.0.0.1:2379"])


def test_load_plan_names_the_choices() -> None:
    assert load_plan("kube").name == "kube"
    with pytest.raises(PlanError, match="not a built-in plan"):
        load_plan("/nonexistent/plan.toml")
