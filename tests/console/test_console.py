"""The web console as each demo role uses it, in headless Chromium against the real app (tests/console/conftest.py):
sign in, flows (filters, verdict colours, redacted peers as their namespace, live follow), the service map and its
edges' flows, a flow's why, policies (edit with the schema's errors inline, what-if before saving, save; no edit
controls for read-only roles, whose forged writes the API refuses). Screenshots of every view go to each test's
tmp_path; a console error fails the test."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console.conftest import Demo, Session, signed_in

ROLES = ["org-admin", "org-read-only", "infra-admin", "project-admin", "project-read-only", "workspace-admin",
         "workspace-read-only"]
# A valid document (the API judges the body before the role): cart-egress opening all of its egress.
FORGED = {"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "cart-egress"},
          "spec": {"scope": "namespace", "rules": [{"name": "all", "cilium": {
              "endpointSelector": {"matchLabels": {"app": "cart"}}, "egress": [{"toEntities": ["all"]}]}}]}}
# Roles also walked through DNS redaction and drops (org-admin also clusters and the report): every role would
# cost the time budget.
DETAILED = {"org-admin", "workspace-read-only"}
WRITERS = {"org-admin", "infra-admin", "project-admin", "workspace-admin"}


def api(demo: Demo, role: str, path: str, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {demo.users[role]['token']}"}
    response = httpx.get(demo.url + path, params=params, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def cells(session: Session, column: int) -> list[str]:
    return session.page.locator(f"#flows-table tbody tr td:nth-child({column})").all_inner_texts()


def show_flows(session: Session, **filters: str) -> None:
    page = session.page
    for name, value in filters.items():
        selector = f"#flow-filters [name={name}]"
        if page.locator(selector).evaluate("e => e.tagName") == "SELECT":
            page.select_option(selector, value)
        else:
            page.fill(selector, value)
    loads = loaded(session)
    page.click("#flow-filters button[type=submit]")
    page.wait_for_function(f"Number(document.querySelector('#flows-table').dataset.loads) > {loads}")


def loaded(session: Session) -> int:
    """How many flow lists the page has shown so far."""
    return int(session.page.evaluate("Number(document.querySelector('#flows-table').dataset.loads || 0)"))


@pytest.mark.parametrize("role", ROLES)
def test_each_role_sees_its_flows_map_and_why(browser: Any, demo: Demo, role: str, tmp_path: Path) -> None:
    with signed_in(browser, demo, role, tmp_path) as s:
        page = s.page
        page.wait_for_selector("#flows-table tbody tr")
        # Newest first, exactly the flows the API gives this role.
        newest = api(demo, role, "/api/v1/flows", limit=100)["flows"]
        assert page.locator("#flows-table tbody tr").count() == len(newest) > 0
        assert page.locator("#flows-table tbody tr td:first-child").first.get_attribute("title") == newest[0]["flow"]["time"]
        namespaces = {n["namespace"] for n in api(demo, role, "/api/v1/namespaces")["namespaces"]}
        offered = set(page.locator("#flow-filters [name=namespace] option").all_inner_texts()) - {"any"}
        assert offered == namespaces
        # netwarden's verdict and attribution beside Hubble's (the worker's enricher stored them).
        judged = [(v, a) for v, a in zip(cells(s, 9), cells(s, 10), strict=True) if v != "not evaluated"]
        assert judged and all(v in {"FORWARDED", "DROPPED"} and "Policy/" in a for v, a in judged), judged[:3]
        s.shot("flows")

        if role in DETAILED:
            # DNS: kube-system's coredns is a peer outside the workspace roles' scope, shown as its namespace.
            show_flows(s, port="53", protocol="udp")
            peers = cells(s, 3) + cells(s, 5)
            assert peers and not any("N/A" in p for p in peers)
            if role.startswith("workspace"):
                assert "kube-system (redacted)" in peers
            else:
                assert any(p.startswith("kube-system/coredns") for p in peers), peers

            # Verdict colours: drops in red.
            show_flows(s, port="", protocol="", verdict="DROPPED")
            dropped = len(api(demo, role, "/api/v1/flows", verdict="DROPPED", limit=100)["flows"])
            verdicts = page.locator("#flows-table tbody td:nth-child(7).v-DROPPED")  # Hubble's verdict
            assert verdicts.count() == page.locator("#flows-table tbody tr").count() == dropped
            if role == "org-admin":  # the demo's planted faults drop outside the shop workspace
                assert dropped > 0
                assert verdicts.first.evaluate("e => getComputedStyle(e).color") == "rgb(198, 40, 40)"
                assert any("denied by" in a for a in cells(s, 8))  # Hubble's attribution of policy drops
            s.shot("flows-dropped")
            show_flows(s, verdict="")

        # A flow's why: a request between two pods of the scope.
        show_flows(s, namespace="shop", port="7070", protocol="tcp")
        page.locator("#flows-table tbody tr", has_text="->").first.click()
        page.wait_for_selector("#why-result, #why-body .error")
        assert "What Hubble saw" in page.inner_text("#why-result")
        assert "Desired policy set now" in page.inner_text("#why-result")
        s.shot("why")
        page.click("#why-close")

        # The service map: one edge per summary edge of the first cluster; an edge opens its flows.
        page.click("#nav a[data-view=map]")
        page.wait_for_selector("#map-canvas text.edge-label")
        cluster = page.locator("#map-filters [name=cluster]").input_value()
        edges = api(demo, role, "/api/v1/flows/summary", since="1h", cluster=cluster, max_edges=200)["edges"]
        assert page.locator("#map-canvas path.edge").count() == len(edges) > 0
        s.shot("map")
        served = [e for e in edges if e["destination"]["workload"] and not e["destination"]["workload"].startswith("reserved")]
        edge = max(served, key=lambda e: e["flows"])
        loads = loaded(s)
        page.locator("#map-canvas text.edge-label", has_text=f"{edge['port']}/{edge['protocol']}").first.click()
        page.wait_for_function(f"Number(document.querySelector('#flows-table').dataset.loads) > {loads}")
        assert page.evaluate("location.hash").startswith("#flows?")
        ports = set(cells(s, 6))
        assert ports and all(p.endswith(f"/{edge['protocol']}") for p in ports)
        assert f"{edge['port']}/{edge['protocol']}" in ports

        # Policies: edit controls only for the roles that may write.
        page.click("#nav a[data-view=policies]")
        page.locator("#policies-table tbody tr[data-policy=cart-egress]").click()
        page.wait_for_selector("#policy-yaml:has-text('cart-egress')")
        # cart-egress is enforced in shop on both demo clusters: only org-admin may write it (project and workspace
        # admins hold demo-east only; infra-admin writes cluster-wide policies).
        assert page.locator("#policy-edit").is_visible() == (role == "org-admin")
        assert page.locator("#policy-new").is_visible() == (role in WRITERS)
        s.shot("policies")
        if role not in WRITERS:
            # A forged write from the page, with the role's own token: the API refuses it.
            with s.console.expect(403):
                status = page.evaluate("""body => fetch('/api/v1/policies/cart-egress', {method: 'PUT', body,
                    headers: {Authorization: 'Bearer ' + sessionStorage.getItem('netwarden.token'),
                              'Content-Type': 'application/json'}}).then(r => r.status)""", json.dumps(FORGED))
            assert status == 403

        if role == "org-admin":
            page.click("#nav a[data-view=clusters]")
            page.wait_for_selector("#clusters-table tbody tr")
            page.wait_for_function("![...document.querySelectorAll('#clusters-table .sync')].some(e => e.textContent === 'checking…')")
            s.shot("clusters")
            page.click("#nav a[data-view=report]")
            page.click("#report-load")
            page.wait_for_function("document.querySelector('#report-frame').src.startsWith('blob:')")
            s.shot("report")
    assert {p.name for p in tmp_path.glob("*.jpeg")} >= {"flows.jpeg", "why.jpeg", "map.jpeg", "policies.jpeg"}


def test_admin_edits_a_policy_with_schema_errors_inline_what_if_then_save(browser: Any, demo: Demo, tmp_path: Path) -> None:
    with signed_in(browser, demo, "org-admin", tmp_path) as s:
        page = s.page
        page.click("#nav a[data-view=policies]")
        page.locator("#policies-table tbody tr[data-policy=cart-egress]").click()
        page.wait_for_selector("#policy-yaml:has-text('cart-egress')")
        page.click("#policy-edit")
        original = page.input_value("#policy-text")
        assert "6379" in original
        assert page.locator("#policy-save").is_disabled()  # what-if first

        # A schema error: shown inline, naming the field and its line.
        broken = original.replace("scope: namespace", "scope: namespaze")
        page.fill("#policy-text", broken)
        with s.console.expect(422):
            page.click("#policy-whatif")
            page.wait_for_selector("#policy-errors li.schema-error")
        error = page.inner_text("#policy-errors")
        line = broken.splitlines().index("  scope: namespaze") + 1
        assert "spec.scope" in error and "namespaze" in error and f"line {line}" in error
        assert page.locator("#policy-save").is_disabled()
        s.shot("policy-error")

        # A real change: what-if shows the observed cart -> redis traffic it would deny, then it may be saved.
        changed = original.replace('"6379"', '"6380"')
        assert changed != original
        page.fill("#policy-text", changed)
        page.click("#policy-whatif")
        page.wait_for_selector("#whatif-summary")
        assert re.search(r"[1-9]\d* observed conversation\(s\) would become denied", page.inner_text("#whatif-summary"))
        assert "6379/TCP" in page.inner_text("#whatif-result")
        assert page.locator("#policy-save").is_enabled()
        s.shot("policy-what-if")
        page.fill("#policy-text", changed + "\n")  # edited after the what-if: must run it again
        assert page.locator("#policy-save").is_disabled()
        page.fill("#policy-text", changed)
        page.click("#policy-whatif")
        page.wait_for_selector("#whatif-summary")
        page.click("#policy-save")
        page.wait_for_selector("#policy-status:has-text('saved: version 2 (updated)')")

        versions = api(demo, "org-admin", "/api/v1/policies/cart-egress/versions")["versions"]
        assert [v["version"] for v in versions] == [1, 2]
        assert "6380" in str(versions[1]["spec"]) and "6379" not in str(versions[1]["spec"])
        # Versions and their diff.
        page.select_option("#policy-version", "2")
        page.select_option("#policy-diff-base", "1")
        removed = page.locator("#policy-diff .del").all_inner_texts()
        assert len(removed) == 1 and re.fullmatch(r'-\s+- port: "6379"\s*', removed[0]), removed
        assert any("6380" in t for t in page.locator("#policy-diff .add").all_inner_texts())
        s.shot("policy-diff")

        # Stage a further change (evaluated on flows, never rendered), then promote it.
        page.click("#policy-edit")
        page.fill("#policy-text", original)
        page.click("#policy-whatif")
        page.wait_for_selector("#whatif-summary")
        page.click("#policy-stage")
        page.wait_for_selector("#policies-table tbody tr[data-policy=cart-egress]:has-text('enforced+staged')")
        page.wait_for_selector("#policy-promote:visible")
        page.click("#policy-promote")
        page.wait_for_selector("#policies-table tbody tr[data-policy=cart-egress] td:nth-child(3):text-is('enforced')")
        versions = api(demo, "org-admin", "/api/v1/policies/cart-egress/versions")["versions"]
        assert versions[-1]["mode"] == "enforced" and "6379" in str(versions[-1]["spec"])
        s.shot("policy-promoted")


SHOP_POLICY = """\
apiVersion: netwarden.io/v1
kind: Policy
metadata: {name: shop-allow-web}
spec:
  scope: namespace
  rules:
    - name: web
      cilium:
        endpointSelector: {matchLabels: {app: frontend}}
        ingress:
          - toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
---
apiVersion: netwarden.io/v1
kind: Assignment
metadata: {name: shop-allow-web}
spec: {policy: shop-allow-web, targets: [{cluster: demo-east, namespace: shop}]}
"""


def test_workspace_admin_writes_a_policy_for_its_workspace_only(browser: Any, demo: Demo, tmp_path: Path) -> None:
    me = api(demo, "workspace-admin", "/api/v1/me")
    assert me["namespace_writes"] == ["demo-east/shop"] and me["cluster_writes"] == [] and me["may_write_policies"]
    with signed_in(browser, demo, "workspace-admin", tmp_path) as s:
        page = s.page
        page.click("#nav a[data-view=policies]")
        page.wait_for_selector("#policies-table tbody tr")
        page.click("#policy-new")
        # Another workspace's namespace: the API names the role needed, beside the text.
        page.fill("#policy-text", SHOP_POLICY.replace("namespace: shop}", "namespace: data}"))
        with s.console.expect(403):
            page.click("#policy-whatif")
            page.wait_for_selector("#policy-errors li")
        assert "workspace-admin" in page.inner_text("#policy-errors") and "demo-east/data" in page.inner_text("#policy-errors")
        page.fill("#policy-text", SHOP_POLICY)
        page.click("#policy-whatif")
        page.wait_for_selector("#whatif-summary")
        page.click("#policy-save")
        page.wait_for_selector("#policies-table tbody tr[data-policy=shop-allow-web]")
        s.shot("policy-created")
    assert api(demo, "workspace-admin", "/api/v1/policies/shop-allow-web")["spec"]["scope"] == "namespace"


def test_live_follow_streams_new_flows_within_the_scope(browser: Any, demo: Demo, tmp_path: Path) -> None:
    with signed_in(browser, demo, "workspace-read-only", tmp_path) as s:
        page = s.page
        page.wait_for_selector("#flows-table tbody tr")
        before = page.locator("#flows-table tbody tr").count()
        page.check("#follow")
        page.wait_for_selector("#flow-status:has-text('following live')")
        demo.publish(200)
        page.wait_for_selector("#flow-status:has-text(' new')")
        page.wait_for_function("document.querySelectorAll('#flows-table tbody tr').length > " + str(before))
        new = int(re.search(r"(\d+) new", page.inner_text("#flow-status")).group(1))  # type: ignore[union-attr]
        sides = list(zip(cells(s, 3)[:new], cells(s, 5)[:new], strict=True))
        assert sides and all(a.startswith("shop") or b.startswith("shop") for a, b in sides), sides
        s.shot("flows-live")
        page.uncheck("#follow")


def test_console_assets_are_the_packaged_files_only(demo: Demo) -> None:
    index = httpx.get(demo.url + "/", timeout=10)
    assert index.status_code == 200 and "/console/app.js" in index.text
    assert "http" not in re.sub(r"<!doctype html>", "", index.text.split("<body>")[0], flags=re.I).replace(
        "http-equiv", "")  # nothing fetched from elsewhere
    assert httpx.get(demo.url + "/console/app.js", timeout=10).headers["content-type"].startswith("text/javascript")
    assert httpx.get(demo.url + "/console/console_routes.py", timeout=10).status_code == 404
    assert httpx.get(demo.url + "/api/v1/me", timeout=10).status_code == 401


def test_me_says_what_each_role_may_write(demo: Demo) -> None:
    may = {role: api(demo, role, "/api/v1/me") for role in ROLES}
    writes = {role: api(demo, role, "/api/v1/me/policies")["policies"] for role in ROLES}
    assert writes["org-admin"]["cart-egress"] and not writes["workspace-admin"]["cart-egress"]
    assert not any(writes["org-read-only"].values()) and not any(writes["workspace-read-only"].values())
    assert {name for name, ok in writes["infra-admin"].items() if ok} == set()  # the blueprint spans demo-west too
    assert {r for r, m in may.items() if m["may_write_policies"]} == WRITERS
    assert {r for r, m in may.items() if m["may_administer"]} == {"org-admin"}
    assert may["org-admin"]["cluster_writes"] == ["demo-east", "demo-west"]
    assert may["infra-admin"]["cluster_writes"] == ["demo-east"] and may["infra-admin"]["namespace_writes"] == []
    assert may["project-admin"]["namespace_writes"] == ["demo-east/data", "demo-east/shop"]
    assert may["workspace-read-only"]["bindings"] == [
        {"role": "workspace-read-only", "scope_kind": "workspace", "scope": "shop-team"}]
