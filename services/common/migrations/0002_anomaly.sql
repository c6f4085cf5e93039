-- The anomaly service: per-meter detector state (baselines, profiles, counters) that must survive a
-- restart, and the registry of trained detector versions.

-- One row per meter the streaming detector has seen. `state` is the compact, versioned encoding of
-- services.anomaly.state (never a pickle); written after each scored batch, before its ack.
CREATE TABLE anomaly_meter_state (
    meter_id    text COLLATE "C" PRIMARY KEY,
    state       bytea NOT NULL,
    update_time timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70, toast_tuple_target = 4080);  -- a state (~2.2 kB) stays inline, uncompressed

-- Trained versions of the learned detectors (2 = Isolation Forest, 3 = autoencoder, as in
-- metermesh.anomaly.v1.Detector). `artifact` is the model as numpy arrays plus a JSON header
-- (np.savez, loaded with allow_pickle=False). At most one version per detector serves.
CREATE TABLE detector_models (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    detector              smallint NOT NULL CHECK (detector IN (2, 3)),
    model_version         text NOT NULL UNIQUE,
    state                 text NOT NULL CHECK (state IN ('candidate', 'serving', 'retired')),
    create_time           timestamptz NOT NULL DEFAULT now(),
    promote_time          timestamptz,
    training_start_time   timestamptz,
    training_end_time     timestamptz,
    meter_count           integer NOT NULL DEFAULT 0,
    training_sample_count bigint NOT NULL DEFAULT 0,
    precision             double precision,
    recall                double precision,
    f1                    double precision,
    roc_auc               double precision,
    evaluated_count       bigint NOT NULL DEFAULT 0,
    anomalous_count       bigint NOT NULL DEFAULT 0,
    params                jsonb NOT NULL DEFAULT '{}'::jsonb,
    promotion_reason      text NOT NULL DEFAULT '',
    artifact              bytea NOT NULL
);
CREATE UNIQUE INDEX detector_models_one_serving ON detector_models (detector) WHERE state = 'serving';
