"""The results tables (output_dir/results/TABLE/*.parquet). docs/results.md documents them."""
import pyarrow as pa

_ts = pa.timestamp("us", tz="UTC")
_key = [("sweep_id", pa.string()), ("trial_id", pa.string())]

SCHEMAS: dict[str, pa.Schema] = {
    "sweeps": pa.schema([
        ("sweep_id", pa.string()), ("name", pa.string()), ("started_at", _ts), ("ended_at", _ts),
        ("trials_total", pa.int64()), ("trials_completed", pa.int64()), ("trials_failed", pa.int64()),
        ("best_trial_id", pa.string()), ("best_val_score", pa.float64()), ("best_test_score", pa.float64()),
        ("summary_json", pa.string()),
        ("git_commit", pa.string()), ("git_dirty", pa.bool_()), ("git_diff_hash", pa.string()),  # the driver's code
    ]),
    "trials": pa.schema([
        *_key, ("status", pa.string()), ("task", pa.string()), ("config_json", pa.string()),
        ("config_hash", pa.string()), ("corpus_manifest_hash", pa.string()), ("git_commit", pa.string()),
        ("git_dirty", pa.bool_()), ("git_diff_hash", pa.string()),  # gepa_lab.config.identity.git_state
        ("started_at", _ts), ("ended_at", _ts), ("error", pa.string()),
        ("seed_val_score", pa.float64()), ("seed_test_score", pa.float64()),
        ("best_val_score", pa.float64()), ("best_test_score", pa.float64()),
        # 95% intervals (gepa_lab.events.INTERVALS); files written before they existed read them as null
        ("seed_test_ci95_low", pa.float64()), ("seed_test_ci95_high", pa.float64()),
        ("best_test_ci95_low", pa.float64()), ("best_test_ci95_high", pa.float64()),
        ("test_gain_ci95_low", pa.float64()), ("test_gain_ci95_high", pa.float64()),
        ("best_candidate_idx", pa.int64()), ("num_candidates", pa.int64()), ("metric_calls", pa.int64()),
        ("lm_calls", pa.int64()), ("wall_seconds", pa.float64()), ("program_path", pa.string()),
        ("user_code_errors", pa.int64()),  # calls of the task's program or metric that raised (scored failure_score)
        # why GEPA stopped on its own (its budget, a cap, optimizer.stop), null when the sweep stopped the trial (error
        # says why); GEPA's iterations and reflective proposals (the proposal knobs at work)
        ("gepa_stop_reason", pa.string()), ("iterations", pa.int64()), ("proposals", pa.int64()),
        ("segment", pa.int64()),  # the PBT segment the row describes: a trial's last (0 outside PBT)
    ]),
    # segment: the PBT segment (gepa_lab/sweep/pbt.py) the row was made in, 0 outside PBT; candidate indices restart
    # with each segment's GEPA state, so a candidate is (trial_id, segment, candidate_idx)
    "candidates": pa.schema([
        *_key, ("segment", pa.int64()), ("candidate_idx", pa.int64()), ("iteration", pa.int64()),
        ("parents", pa.list_(pa.int64())),
        ("val_score", pa.float64()), ("metric_calls", pa.int64()), ("instruction", pa.string()),
        ("instructions_json", pa.string()), ("created_at", _ts),
    ]),
    # population-based search (gepa_lab/sweep/pbt.py): every candidate of every segment of a trial (segments are the
    # runs between exploits), with the trial it was first made in; unique on (trial_id, segment, candidate_idx)
    "lineage": pa.schema([
        *_key, ("segment", pa.int64()), ("candidate_idx", pa.int64()), ("origin_trial_id", pa.string()),
        ("origin_segment", pa.int64()), ("origin_candidate_idx", pa.int64()),
    ]),
    "evaluations": pa.schema([
        # example_id: the corpus row's id (results written before it was one hold the index in the split, as int64:
        # query.open_results reads them as strings). prediction: JSON of the output fields; prediction and feedback
        # are capped at gepa_lab.tasks.outcomes.TEXT_CAP characters (per field), null where nothing was recorded.
        *_key, ("segment", pa.int64()), ("split", pa.string()), ("candidate_idx", pa.int64()),
        ("example_id", pa.string()),
        ("score", pa.float64()), ("prediction", pa.string()), ("feedback", pa.string()),
    ]),
    "lm_usage": pa.schema([
        *_key, ("segment", pa.int64()), ("role", pa.string()), ("requests", pa.int64()), ("cache_hits", pa.int64()),
        ("errors", pa.int64()),
        ("retries", pa.int64()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
        ("latency_p50_s", pa.float64()), ("latency_p95_s", pa.float64()), ("cost_usd", pa.float64()),
        ("failovers", pa.int64()),  # the router moved a request to another replica after an error (gepa_lab.lm.accounting)
    ]),
}

# Columns added later whose absence means a value, not "unknown": query.open_results reads them as this value in files
# written before them (a trial before PBT segments existed was one segment, 0)
DEFAULTS: dict[str, dict[str, int]] = {table: {"segment": 0} for table in ("trials", "candidates", "evaluations", "lm_usage")}
