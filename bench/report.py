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
# Round 2: shares of the bare ceiling app's req/s in the same run (case, the ceiling's case, share).
ROUND2_SHARES = (
    ("REST list", "REST list", 0.48),
    ("GraphQL list", "REST list", 0.38),
    ("REST create", "REST create", 0.38),
)
TARGET_ROUND2_P99_MS = 1500


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
    if not rows:
        return ""
    lines = ["| Target (issue 5) | Measured | Ratio | Met |", "|---|---|---|---|"]
    lines += [f"| {name} | {measured} | {ratio} | {_verdict(ok)} |" for name, measured, ratio, ok in rows]
    return "\n".join(lines)


def _stress_pairs(results: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each case at the usual connections with its @N sibling on the same server, when that ran."""
    pairs = []
    for row in results["cases"]:
        if "@" in row["case"]:
            continue
        stress = next(
            (
                other
                for other in results["cases"]
                if other["server"] == row["server"] and other["case"].startswith(row["case"] + " @")
            ),
            None,
        )
        pairs.append((row, stress))
    return pairs


def tail_table(results: dict[str, Any]) -> str:
    """Per case: throughput and latency at the usual connections next to the tail at 1000."""
    lines = [
        "| Case | Server | Conns | req/s | p50 ms | p99 ms | Conns | req/s | p50 ms | p99 ms | max ms | failures "
        "| worker RSS after, MiB |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row, stress in _stress_pairs(results):
        if stress is None:
            continue
        rss = ", ".join(f"{mb:.0f}" for mb in stress["worker_rss_mb"])
        lines.append(
            f"| {row['case']} | {row['server']} | {row['connections']} | {row['rps']:,.0f} | {row['p50_ms']:.1f} "
            f"| {row['p99_ms']:.1f} | {stress['connections']} | {stress['rps']:,.0f} | {stress['p50_ms']:,.1f} "
            f"| {stress['p99_ms']:,.1f} | {stress['max_ms']:,.0f} | {stress['failures']} | {rss} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def round2_targets_table(results: dict[str, Any]) -> str:
    """Round 2's targets: shares of the bare ceiling measured in the same run, tail latency, memory, new users."""
    rows: list[tuple[str, str, str, bool | None]] = []
    for case, ceiling_case, share in ROUND2_SHARES:
        app = _find(results, case, "app-w1")
        ceiling = _find(results, ceiling_case, "ceiling")
        if app is None:
            continue
        name = f"{case} (1 worker) ≥ {share:.0%} of the bare ceiling's {ceiling_case}"
        if ceiling is None or not ceiling["rps"]:
            rows.append((name, f"{app['rps']:,.0f} req/s; no ceiling in this run", "", None))
            continue
        measured = app["rps"] / ceiling["rps"]
        ok = measured >= share and app["failures"] == 0 and app["requests"] > 0
        rows.append((name, f"{app['rps']:,.0f} / {ceiling['rps']:,.0f} req/s", f"{measured:.0%}", ok))
    for row in results["cases"]:
        if row["server"] != "app-w1" or "@" not in row["case"]:
            continue
        ok = row["p99_ms"] <= TARGET_ROUND2_P99_MS and row["failures"] == 0 and row["requests"] > 0
        measured = f"p99 {row['p99_ms']:,.0f} ms (p50 {row['p50_ms']:,.0f}), {row['failures']} failures"
        if not row["requests"]:
            measured = "no response within the run"
        rows.append((f"{row['case']}: p99 ≤ 1.5 s, 0 failures", measured, "", ok))
        rss = ", ".join(f"{mb:.0f}" for mb in row["worker_rss_mb"])
        rows.append((f"Worker RSS after {row['case']} (report)", f"{rss} MiB", "", None))
    for case in ("REST list", "REST create"):
        bare, fastapi = _find(results, case, "ceiling"), _find(results, case, "ceiling-fastapi")
        if bare and fastapi and bare["rps"]:
            cpu = f"CPU {fastapi['worker_cpu_ms_per_req']:.2f} vs {bare['worker_cpu_ms_per_req']:.2f} ms/req"
            rows.append(
                (
                    f"{case}: the ceiling in FastAPI (one dependency) vs bare (report)",
                    f"{fastapi['rps']:,.0f} / {bare['rps']:,.0f} req/s; {cpu}",
                    f"{fastapi['rps'] / bare['rps']:.0%}",
                    None,
                )
            )
    for run in results.get("new_users", []):
        latency = run["latency"]
        measured = f"{run['errors']} errors in {run['requests']:,} requests; p99 {latency['p99_ms']:,.0f} ms"
        rows.append((f"{run['users']:,} new users at once (2 workers): 0 errors", measured, "", run["errors"] == 0))
    if not rows:
        return ""
    lines = ["| Target (round 2) | Measured | Share of the bare ceiling | Met |", "|---|---|--:|---|"]
    lines += [f"| {name} | {measured} | {ratio} | {_verdict(ok)} |" for name, measured, ratio, ok in rows]
    return "\n".join(lines)


def _statuses(statuses: dict[str, int]) -> str:
    return ", ".join(f"{status}: {count:,}" for status, count in statuses.items())


def new_users_tables(results: dict[str, Any]) -> str:
    runs = results.get("new_users") or []
    if not runs:
        return ""
    lines = [
        "| New users at once | Server | Requests | Wall s | req/s | Errors | Statuses | p50 ms | p95 ms | p99 ms "
        "| max ms | worker CPU ms/req | PG CPU ms/req | generator CPU (cores) | peak DB connections (active) "
        "| worker RSS after, MiB | other load (cores) |",
        "|--:|---|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for run in runs:
        latency = run["latency"]
        rss = ", ".join(f"{mb:.0f}" for mb in run["worker_rss_mb"])
        lines.append(
            f"| {run['users']:,} | {run['server']} | {run['requests']:,} | {run['wall_s']:.1f} | {run['rps']:,.0f} "
            f"| {run['errors']:,} | {_statuses(run['statuses'])} | {latency['p50_ms']:,.0f} | {latency['p95_ms']:,.0f} "
            f"| {latency['p99_ms']:,.0f} | {latency['max_ms']:,.0f} | {run['worker_cpu_ms_per_req']:.2f} "
            f"| {run['postgres_cpu_ms_per_req']:.2f} | {run['generator_cpu_cores']:.2f} "
            f"| {run['peak_db_connections']} ({run['peak_db_active']}) | {rss} | {run['other_cpu_cores']:.2f} |"
        )
    for run in runs:
        log = run["server_log"]
        by_app = log.get("server_latency_by_operation", {})
        lines += ["", f"{run['users']:,} new users, by operation (the client's latency, and the app's own from its"]
        lines += ["access log, timed from when the app got the request):", ""]
        lines += ["| Operation | requests | p50 ms | p95 ms | p99 ms | max ms | app p50 ms | app p99 ms | errors |"]
        lines += ["|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for operation, latency in run["latency_by_operation"].items():
            errors = sum(count for key, count in run["errors_by_operation"].items() if key.split(":")[0] == operation)
            app = by_app.get(operation, {})
            lines.append(
                f"| {operation} | {latency['count']:,} | {latency['p50_ms']:,.1f} | {latency['p95_ms']:,.1f} "
                f"| {latency['p99_ms']:,.1f} | {latency['max_ms']:,.1f} | {app.get('p50_ms', '')} "
                f"| {app.get('p99_ms', '')} | {errors:,} |"
            )
        connect = run["connect"]
        lines.append(
            f"| (TCP connect) | {connect['count']:,} | {connect['p50_ms']:,.1f} | {connect['p95_ms']:,.1f} "
            f"| {connect['p99_ms']:,.1f} | {connect['max_ms']:,.1f} | | | |"
        )
        states = "; ".join(f"{state} {mean:.1f}" for state, mean in run["db_backends_by_state"].items())
        lines += ["", f"PostgreSQL backends by state (mean over {run['db_monitor_samples']} samples): {states}."]
        split = " / ".join(f"{seconds:.1f}" for seconds in run["worker_cpu_s"])
        files = " / ".join(str(extra) for extra in run.get("worker_peak_extra_open_files", []))
        lines.append(f"Worker CPU seconds, per worker: {split}; open files above the idle count at peak: {files}.")
        lines.append(
            f"Server log during the run: {log['lines']} lines ({log.get('access_lines', 0)} access lines, statuses "
            f"{_statuses(log.get('server_statuses', {}))}), {log['warnings']} warnings, {log['errors']} errors."
        )
        timeline = ", ".join(str(count) for count in run["completed_per_second"])
        lines.append(f"Responses per second of the run: {timeline}.")
        if run["errors_by_operation"]:
            lines.append(f"Errors: {_statuses(run['errors_by_operation'])}.")
    return "\n".join(lines)


def _plan_cell(plan: dict[str, Any] | None) -> str:
    return f"{plan['plan_nodes']} ({plan['execution_ms']})" if plan else ""


def search_tables(results: dict[str, Any]) -> str:
    search = results.get("search")
    if not search:
        return ""
    lines = [
        "| Search probe (1 connection) | matches | p50 ms | p95 ms | p99 ms | max ms | SQL median ms (prepared) "
        "| custom plan (ms) | generic plan (ms) | after 5 executions |",
        "|---|--:|--:|--:|--:|--:|--:|---|---|---|",
    ]
    for name, probe in search["probes"].items():
        statement = search["statements"].get(name, {})
        plans = statement.get("plans", {})

        shown = [_plan_cell(plans.get(label)) for label in ("custom", "generic", "auto")]
        lines.append(
            f"| {name} | {probe['total_count']} | {probe['p50_ms']:.2f} | {probe['p95_ms']:.2f} "
            f"| {probe['p99_ms']:.2f} | {probe['max_ms']:.2f} | {statement.get('median_ms', '')} | "
            + " | ".join(shown)
            + " |"
        )
    indexes = search["indexes"]
    present = ", ".join(indexes["indexes"]) or "none"
    lines += ["", f"Trigram indexes on tasks: {present} (pg_trgm {indexes['pg_trgm'] or 'missing'})."]
    sources = {statement["source"] for statement in search["statements"].values()}
    lines.append(f"Statement: {'; '.join(sorted(sources))}.")
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
    parts = [header]
    if results["cases"]:
        parts += ["", cases_table(results)]
    for table in (tail_table(results), targets_table(results), round2_targets_table(results)):
        if table:
            parts += ["", table]
    for table in (new_users_tables(results), search_tables(results)):
        if table:
            parts += ["", table]
    if results.get("probes") or results.get("sql"):
        parts += ["", probes_table(results)]
    if results.get("problems"):
        parts += ["", "Failed checks: " + "; ".join(results["problems"])]
    return "\n".join(parts) + "\n"
