"""Markdown tables out of a run's results.json: the measurements, and the issue's targets."""

from typing import Any

# Reference figures of issue 5 (2 cores, PostgreSQL 15, wrk 1 thread, 12 s per case).
PEER_LIST_RPS = 1400  # PostGraphile v5, one process, GraphQL list at 64 connections
PEER_CREATE_RPS = 730
PEER_STRESS_P99_MS = 1420
TARGET_LIST_RPS = 1.0 * PEER_LIST_RPS
TARGET_GRAPHQL_RPS = 1000  # 0.7x the peer
TARGET_CREATE_RPS = 1.5 * PEER_CREATE_RPS
TARGET_STRESS_P99_MS = 1500
TARGET_CEILING_SHARE = 0.5
TARGET_BIG_USER_FACTOR = 3.0


def _find(results: dict[str, Any], case: str, server: str) -> dict[str, Any] | None:
    for row in results["cases"]:
        if (row["case"] == case or (case.endswith("@") and row["case"].startswith(case))) and row["server"] == server:
            found: dict[str, Any] = row
            return found
    return None


def _triple(load: list[float]) -> str:
    return " / ".join(f"{value:.2f}" for value in load)


def _load(row: dict[str, Any]) -> str:
    return f"{row['load_before'][0]:.2f} → {row['load_after'][0]:.2f}"


def cases_table(results: dict[str, Any]) -> str:
    lines = [
        "| Case | Server | Conns | req/s | p50 ms | p99 ms | non-2xx | GraphQL errors | socket errors / timeouts "
        "| worker CPU ms/req | PG CPU ms/req | other load (cores) | load 1 min (before → after) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in results["cases"]:
        lines.append(
            f"| {row['case']} | {row['server']} | {row['connections']} | {row['rps']:,.0f} | {row['p50_ms']:.1f} "
            f"| {row['p99_ms']:.1f} | {row['non2xx']} | {row['graphql_errors']} "
            f"| {row['socket_errors']} / {row['timeouts']} | {row['worker_cpu_ms_per_req']:.2f} "
            f"| {row['postgres_cpu_ms_per_req']:.2f} | {row['other_cpu_cores']:.2f} | {_load(row)} |"
        )
    return "\n".join(lines)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def targets_table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, bool | None]] = []
    rest = _find(results, "REST list", "app-w1")
    graphql = _find(results, "GraphQL list", "app-w1")
    create = _find(results, "REST create", "app-w1")
    stress = _find(results, "REST list @", "app-w1")
    ceiling = _find(results, "REST list", "ceiling")
    redis = _find(results, "REST list (Redis)", "app-w1-redis")
    if rest:
        ok = rest["rps"] >= TARGET_LIST_RPS and rest["failures"] == 0
        rows.append(
            ("REST list per core ≥ 1.0x peer (1,400)", f"{rest['rps']:,.0f}", f"{rest['rps'] / PEER_LIST_RPS:.2f}x", ok)
        )
    if graphql:
        ok = graphql["rps"] >= TARGET_GRAPHQL_RPS and graphql["failures"] == 0
        ratio = f"{graphql['rps'] / PEER_LIST_RPS:.2f}x"
        rows.append(("GraphQL list per core ≥ 0.7x peer (1,000)", f"{graphql['rps']:,.0f}", ratio, ok))
    if create:
        ok = create["rps"] >= TARGET_CREATE_RPS and create["failures"] == 0
        ratio = f"{create['rps'] / PEER_CREATE_RPS:.2f}x"
        rows.append(("REST create per core ≥ 1.5x peer's create (1,095)", f"{create['rps']:,.0f}", ratio, ok))
    if stress:
        ok = stress["p99_ms"] <= TARGET_STRESS_P99_MS and stress["failures"] == 0
        measured = f"p99 {stress['p99_ms']:,.0f} ms, {stress['failures']} failures ({stress['timeouts']} timeouts)"
        rows.append(
            (
                f"{stress['connections']} connections: p99 ≤ 1.5 s, 0 errors, 0 timeouts",
                measured,
                f"{stress['p99_ms'] / PEER_STRESS_P99_MS:.2f}x peer's p99",
                ok,
            )
        )
        rss = ", ".join(f"{mb:.0f}" for mb in stress["worker_rss_mb"])
        rows.append((f"Worker RSS after the {stress['connections']}-connection run (report)", f"{rss} MiB", "", None))
    if rest and redis:
        cpu = f"worker CPU {redis['worker_cpu_ms_per_req']:.2f} vs {rest['worker_cpu_ms_per_req']:.2f} ms/req"
        rows.append(
            (
                "Rate limit counted in Redis vs in memory, REST list (report)",
                f"{redis['rps']:,.0f} vs {rest['rps']:,.0f} req/s; {cpu}",
                f"{redis['rps'] / rest['rps']:.2f}x" if rest["rps"] else "",
                None,
            )
        )
    if rest and ceiling:
        share = rest["rps"] / ceiling["rps"] if ceiling["rps"] else 0.0
        rows.append(
            (
                "REST list ≥ 50% of the ceiling app",
                f"{rest['rps']:,.0f} / {ceiling['rps']:,.0f}",
                f"{share:.0%}",
                share >= TARGET_CEILING_SHARE,
            )
        )
    probes = results.get("probes")
    if probes:
        factor = probes["big_vs_small_first_page"]
        rows.append(
            (
                "100k-task user's first page ≤ 3x a 50-task user's",
                f"{probes['big_first_page']['p50_ms']:.1f} vs {probes['small_first_page']['p50_ms']:.1f} ms (p50)",
                f"{factor:.1f}x",
                factor <= TARGET_BIG_USER_FACTOR,
            )
        )
        rows.append(
            (
                f"Deep page (page {probes['deep_page']}) of the 100k-task user (report)",
                f"{probes['big_deep_page']['p50_ms']:.1f} ms (p50)",
                "",
                None,
            )
        )
    sql = results.get("sql")
    if sql:
        rows.append(
            (
                "Total count of the 100k-task user in PostgreSQL (report)",
                f"{sql['big_count']['median_ms']:.1f} ms (50 tasks: {sql['small_count']['median_ms']:.2f} ms)",
                "",
                None,
            )
        )
    lines = ["| Target (issue 5) | Measured | Ratio | Met |", "|---|---|---|---|"]
    lines += [f"| {name} | {measured} | {ratio} | {_verdict(ok)} |" for name, measured, ratio, ok in rows]
    return "\n".join(lines)


def probes_table(results: dict[str, Any]) -> str:
    lines = ["| Sequential probe (1 connection) | p50 ms | p95 ms | mean ms | statuses |", "|---|--:|--:|--:|---|"]
    probes = results.get("probes") or {}
    for name in ("small_first_page", "big_first_page", "big_deep_page"):
        if name in probes:
            probe = probes[name]
            lines.append(
                f"| {name.replace('_', ' ')} | {probe['p50_ms']:.2f} | {probe['p95_ms']:.2f} | {probe['mean_ms']:.2f} "
                f"| {probe['statuses']} |"
            )
    sql = results.get("sql") or {}
    if sql:
        lines += ["", "| PostgreSQL alone (asyncpg, prepared) | median ms | plan |", "|---|--:|---|"]
        for name, entry in sql.items():
            lines.append(f"| {name.replace('_', ' ')} | {entry['median_ms']:.3f} | {entry['plan_nodes']} |")
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    header = (
        f"Run {meta['started_at']} on {meta['machine']['cpu']} ({meta['machine']['cores']} cores, "
        f"{meta['machine']['memory_gib']:.0f} GiB), {meta['settings']['duration']:.0f} s per case, "
        f"wrk {meta['settings']['threads']} thread, load average before {_triple(meta['load_before'])}, "
        f"after {_triple(meta['load_after'])}; "
        f"{meta['elapsed_s']:.0f} s in all."
    )
    parts = [header, "", cases_table(results), "", targets_table(results)]
    if results.get("probes") or results.get("sql"):
        parts += ["", probes_table(results)]
    if results.get("problems"):
        parts += ["", "Failed checks: " + "; ".join(results["problems"])]
    return "\n".join(parts) + "\n"
