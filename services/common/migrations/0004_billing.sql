-- The billing service: stored bills (every version kept) and billing cycles.
--
-- A bill is one meter's charges for one billing period: whole days [period_start_date,
-- period_end_date) in its tariff's time zone. Recomputing a period whose inputs changed (late
-- readings, a changed load) issues version n+1 and marks version n superseded; at most one version per
-- meter and period is issued, which a partial unique index enforces whatever runs concurrently.

CREATE TABLE bills (
    -- "<meter_id>:<YYYYMMDD>-<YYYYMMDD>:v<version>": derived from what it bills, so a write that a
    -- crash or a retry repeats lands on the same row (ON CONFLICT DO NOTHING).
    bill_id               text COLLATE "C" PRIMARY KEY,
    meter_id              text COLLATE "C" NOT NULL,
    period_start_date     date NOT NULL,
    period_end_date       date NOT NULL,  -- first day not billed
    version               integer NOT NULL CHECK (version >= 1),
    status                text NOT NULL CHECK (status IN ('issued', 'superseded')),
    -- The period as instants: local midnights in the tariff's time zone.
    start_time            timestamptz NOT NULL,
    end_time              timestamptz NOT NULL,
    tariff_id             text NOT NULL,
    tariff_versions       text[] NOT NULL,
    currency_code         text NOT NULL,
    import_energy_kwh     numeric NOT NULL,
    export_energy_kwh     numeric NOT NULL,
    subtotal              numeric NOT NULL,
    total                 numeric NOT NULL,
    -- The itemised lines in bill order: kind, description, quantity, unit, rate, rate_percent,
    -- applies_to, amount (decimals as strings), plus the tariff subtotal and version each came from.
    lines                 jsonb NOT NULL,
    -- Digest of everything the bill was computed from (tariff id, versions and content, period,
    -- energy per time-of-use bucket, hours with data, load): equal inputs give the same bill.
    inputs_hash           text NOT NULL,
    sanctioned_load_kw    double precision NOT NULL,
    data_coverage_percent double precision NOT NULL,
    billing_cycle_id      text COLLATE "C",
    issue_time            timestamptz NOT NULL DEFAULT now(),
    superseded_by_bill_id text COLLATE "C",
    -- For version n > 1: the bill it replaced, that bill's total and the difference (total - previous).
    previous_bill_id      text COLLATE "C",
    previous_total        numeric,
    total_difference      numeric,
    CHECK (period_end_date > period_start_date),
    UNIQUE (meter_id, period_start_date, period_end_date, version)
);

-- The one issued bill per meter and period. Its leading columns also serve a cycle's look-up of
-- every issued bill of a period.
CREATE UNIQUE INDEX bills_issued ON bills (period_start_date, period_end_date, meter_id)
    WHERE status = 'issued';

-- Billing cycles read a whole period of hourly rollups in one pass. The writer fills the table in
-- time order, so a BRIN index on the hour (tiny, cheap to maintain, no obstacle to HOT updates) lets
-- that pass read only the period's pages once the table holds many months.
CREATE INDEX readings_hourly_hour_brin ON readings_hourly USING brin (hour_start_time)
    WITH (pages_per_range = 32, autosummarize = on);

-- A billing cycle: one request to bill many meters for a period, possibly run several times (a run
-- that was interrupted is resumed by the next identical request, under the same cycle_id).
CREATE TABLE billing_cycles (
    cycle_id       text COLLATE "C" PRIMARY KEY,
    -- Digest of the request (period, filters, recompute): an unfinished cycle with the same key is
    -- resumed rather than started afresh.
    request_key    text NOT NULL,
    start_time     timestamptz NOT NULL,  -- the billing period as requested
    end_time       timestamptz NOT NULL,
    category       text NOT NULL DEFAULT '',
    tariff_id      text NOT NULL DEFAULT '',
    meter_ids      text[] NOT NULL DEFAULT '{}',
    recompute      boolean NOT NULL DEFAULT false,
    -- running: a process holds the cycle's advisory lock (or held it when it died); interrupted: its
    -- run stopped (cancelled, failed); finished: every meter was billed, skipped or failed.
    state          text NOT NULL CHECK (state IN ('running', 'interrupted', 'finished')),
    lock_key       integer NOT NULL,  -- pg_advisory_lock(<billing namespace>, lock_key) while it runs
    run_count      integer NOT NULL DEFAULT 1,
    create_time    timestamptz NOT NULL DEFAULT now(),
    finish_time    timestamptz,
    total_count    integer NOT NULL DEFAULT 0,
    billed_count   integer NOT NULL DEFAULT 0,
    skipped_count  integer NOT NULL DEFAULT 0,
    failed_count   integer NOT NULL DEFAULT 0,
    CHECK (end_time > start_time)
);

CREATE INDEX billing_cycles_unfinished ON billing_cycles (request_key) WHERE state <> 'finished';
