-- The schema bss.db.init_db made at a392526, the last commit before migrations (pg_dump --schema-only).
CREATE TABLE public.batch_segment_configs (
    id integer NOT NULL,
    member_id integer NOT NULL,
    config_json text NOT NULL,
    created_on bigint NOT NULL,
    last_modified bigint NOT NULL
);

CREATE SEQUENCE public.batch_segment_configs_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.batch_segment_configs_id_seq OWNED BY public.batch_segment_configs.id;

CREATE TABLE public.job_replays (
    job_id integer NOT NULL,
    applied_as_of bigint NOT NULL,
    config_json text NOT NULL,
    registry bytea NOT NULL
);

CREATE SEQUENCE public.job_replays_job_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.job_replays_job_id_seq OWNED BY public.job_replays.job_id;

CREATE TABLE public.jobs (
    id integer NOT NULL,
    job_id character varying(40) NOT NULL,
    member_id integer NOT NULL,
    phase character varying(20) NOT NULL,
    upload_url text,
    upload_source character varying(10) NOT NULL,
    source_key text,
    created_on bigint NOT NULL,
    last_modified bigint NOT NULL,
    start_time bigint,
    uploaded_time bigint,
    validated_time bigint,
    completed_time bigint,
    processing_started bigint,
    time_to_process character varying(20),
    percent_complete integer NOT NULL,
    error_code character varying(64),
    error_message text,
    num_valid bigint NOT NULL,
    num_invalid_format bigint NOT NULL,
    num_valid_user bigint NOT NULL,
    num_invalid_user bigint NOT NULL,
    num_invalid_segment bigint NOT NULL,
    num_invalid_timestamp bigint NOT NULL,
    num_unauth_segment bigint NOT NULL,
    num_past_expiration bigint NOT NULL,
    num_inactive_segment bigint NOT NULL,
    num_other_error bigint NOT NULL,
    error_log_lines text,
    segment_log_lines text,
    file_path text,
    file_bytes bigint NOT NULL,
    file_lines bigint NOT NULL,
    file_deleted integer NOT NULL,
    report_path text,
    lines_read bigint NOT NULL,
    pairs_added bigint NOT NULL,
    pairs_removed bigint NOT NULL,
    claimed_until bigint,
    claimed_by character varying(64),
    attempts integer NOT NULL,
    seq_base bigint
);

CREATE SEQUENCE public.jobs_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.jobs_id_seq OWNED BY public.jobs.id;

CREATE TABLE public.leases (
    name character varying(300) NOT NULL,
    holder character varying(200) NOT NULL,
    expires_at bigint NOT NULL
);

CREATE TABLE public.logins (
    id integer NOT NULL,
    user_id integer NOT NULL,
    at bigint NOT NULL
);

CREATE SEQUENCE public.logins_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.logins_id_seq OWNED BY public.logins.id;

CREATE TABLE public.members (
    id integer NOT NULL,
    name character varying(200) NOT NULL,
    state character varying(20) NOT NULL,
    created_on bigint NOT NULL,
    last_modified bigint NOT NULL
);

CREATE SEQUENCE public.members_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.members_id_seq OWNED BY public.members.id;

CREATE TABLE public.passive_claims (
    id integer NOT NULL,
    identity character varying(64) NOT NULL,
    backend character varying(16) NOT NULL,
    location character varying(1024) NOT NULL,
    member_id bigint NOT NULL,
    source_key text NOT NULL,
    fingerprint character varying(256) NOT NULL,
    size bigint,
    state character varying(16) NOT NULL,
    owner character varying(128),
    lease_until timestamp without time zone,
    job_id character varying(64),
    job_db_id bigint,
    work_key text,
    outcome character varying(16),
    dest_key text,
    error text,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL
);

CREATE SEQUENCE public.passive_claims_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.passive_claims_id_seq OWNED BY public.passive_claims.id;

CREATE TABLE public.rate_counters (
    key character varying(300) NOT NULL,
    window_end bigint NOT NULL,
    hits integer NOT NULL
);

CREATE TABLE public.region_writes (
    id integer NOT NULL,
    region character varying(40) NOT NULL,
    job_id integer,
    batch bytea,
    segment_id integer,
    delete_seq bigint,
    state character varying(10) NOT NULL,
    attempts integer NOT NULL,
    error text,
    next_try bigint NOT NULL,
    claimed_by character varying(200),
    claimed_until bigint,
    updated_at bigint NOT NULL
);

CREATE SEQUENCE public.region_writes_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.region_writes_id_seq OWNED BY public.region_writes.id;

CREATE TABLE public.reports (
    report_id character varying(32) NOT NULL,
    member_id integer NOT NULL,
    user_id integer,
    username character varying(200),
    report_type character varying(40) NOT NULL,
    json_request text NOT NULL,
    created_on bigint NOT NULL,
    start_day integer NOT NULL,
    end_day integer NOT NULL,
    format character varying(10) NOT NULL,
    result_json text,
    execution_status character varying(20) NOT NULL
);

CREATE TABLE public.rt_idempotency_keys (
    member_id integer NOT NULL,
    idempotency_key character varying(200) NOT NULL,
    created_on bigint NOT NULL,
    response_json text
);

CREATE TABLE public.segment_id_counter (
    id integer NOT NULL,
    last_id integer NOT NULL
);

CREATE SEQUENCE public.segment_id_counter_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.segment_id_counter_id_seq OWNED BY public.segment_id_counter.id;

CREATE TABLE public.segment_load_sources (
    source character varying(120) NOT NULL,
    counted_on bigint NOT NULL
);

CREATE TABLE public.segment_loads (
    segment_id integer NOT NULL,
    day integer NOT NULL,
    loads bigint NOT NULL,
    removals bigint NOT NULL,
    uniques bytea
);

CREATE TABLE public.segments (
    id integer NOT NULL,
    member_id integer NOT NULL,
    code character varying(50),
    code_key character varying(50),
    short_name character varying(255),
    description text,
    state character varying(10) NOT NULL,
    expire_minutes integer,
    created_on bigint NOT NULL,
    last_modified bigint NOT NULL
);

CREATE SEQUENCE public.segments_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.segments_id_seq OWNED BY public.segments.id;

CREATE TABLE public.seq_counters (
    name character varying(20) NOT NULL,
    next_seq bigint NOT NULL
);

CREATE TABLE public.tokens (
    token_hash character varying(64) NOT NULL,
    user_id integer NOT NULL,
    expires_at bigint NOT NULL
);

CREATE TABLE public.users (
    id integer NOT NULL,
    username character varying(200) NOT NULL,
    password_hash character varying(300) NOT NULL,
    user_type character varying(20) NOT NULL,
    member_id integer,
    created_on bigint NOT NULL,
    last_modified bigint NOT NULL
);

CREATE SEQUENCE public.users_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.users_id_seq OWNED BY public.users.id;

CREATE TABLE public.webhook_deliveries (
    id integer NOT NULL,
    delivery_id character varying(36) NOT NULL,
    member_id integer NOT NULL,
    job_id character varying(40),
    event character varying(40) NOT NULL,
    body text NOT NULL,
    state character varying(10) NOT NULL,
    attempts integer NOT NULL,
    created_on bigint NOT NULL,
    first_attempt_on bigint,
    last_attempt_on bigint,
    next_attempt_ms bigint NOT NULL,
    finished_on bigint,
    url text,
    last_status_code integer,
    last_error text,
    claimed_by character varying(80),
    claimed_until bigint
);

CREATE SEQUENCE public.webhook_deliveries_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.webhook_deliveries_id_seq OWNED BY public.webhook_deliveries.id;

ALTER TABLE ONLY public.batch_segment_configs ALTER COLUMN id SET DEFAULT nextval('public.batch_segment_configs_id_seq'::regclass);

ALTER TABLE ONLY public.job_replays ALTER COLUMN job_id SET DEFAULT nextval('public.job_replays_job_id_seq'::regclass);

ALTER TABLE ONLY public.jobs ALTER COLUMN id SET DEFAULT nextval('public.jobs_id_seq'::regclass);

ALTER TABLE ONLY public.logins ALTER COLUMN id SET DEFAULT nextval('public.logins_id_seq'::regclass);

ALTER TABLE ONLY public.members ALTER COLUMN id SET DEFAULT nextval('public.members_id_seq'::regclass);

ALTER TABLE ONLY public.passive_claims ALTER COLUMN id SET DEFAULT nextval('public.passive_claims_id_seq'::regclass);

ALTER TABLE ONLY public.region_writes ALTER COLUMN id SET DEFAULT nextval('public.region_writes_id_seq'::regclass);

ALTER TABLE ONLY public.segment_id_counter ALTER COLUMN id SET DEFAULT nextval('public.segment_id_counter_id_seq'::regclass);

ALTER TABLE ONLY public.segments ALTER COLUMN id SET DEFAULT nextval('public.segments_id_seq'::regclass);

ALTER TABLE ONLY public.users ALTER COLUMN id SET DEFAULT nextval('public.users_id_seq'::regclass);

ALTER TABLE ONLY public.webhook_deliveries ALTER COLUMN id SET DEFAULT nextval('public.webhook_deliveries_id_seq'::regclass);

ALTER TABLE ONLY public.batch_segment_configs
    ADD CONSTRAINT batch_segment_configs_member_id_key UNIQUE (member_id);

ALTER TABLE ONLY public.batch_segment_configs
    ADD CONSTRAINT batch_segment_configs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.job_replays
    ADD CONSTRAINT job_replays_pkey PRIMARY KEY (job_id);

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_job_id_key UNIQUE (job_id);

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.leases
    ADD CONSTRAINT leases_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.logins
    ADD CONSTRAINT logins_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.members
    ADD CONSTRAINT members_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.passive_claims
    ADD CONSTRAINT passive_claims_identity_key UNIQUE (identity);

ALTER TABLE ONLY public.passive_claims
    ADD CONSTRAINT passive_claims_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.rate_counters
    ADD CONSTRAINT rate_counters_pkey PRIMARY KEY (key);

ALTER TABLE ONLY public.region_writes
    ADD CONSTRAINT region_writes_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.reports
    ADD CONSTRAINT reports_pkey PRIMARY KEY (report_id);

ALTER TABLE ONLY public.rt_idempotency_keys
    ADD CONSTRAINT rt_idempotency_keys_pkey PRIMARY KEY (member_id, idempotency_key);

ALTER TABLE ONLY public.segment_id_counter
    ADD CONSTRAINT segment_id_counter_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.segment_load_sources
    ADD CONSTRAINT segment_load_sources_pkey PRIMARY KEY (source);

ALTER TABLE ONLY public.segment_loads
    ADD CONSTRAINT segment_loads_pkey PRIMARY KEY (segment_id, day);

ALTER TABLE ONLY public.segments
    ADD CONSTRAINT segments_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.seq_counters
    ADD CONSTRAINT seq_counters_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.tokens
    ADD CONSTRAINT tokens_pkey PRIMARY KEY (token_hash);

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_username_key UNIQUE (username);

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_delivery_id_key UNIQUE (delivery_id);

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (id);

CREATE INDEX ix_jobs_member_id ON public.jobs USING btree (member_id, id);

CREATE INDEX ix_jobs_member_modified ON public.jobs USING btree (member_id, last_modified);

CREATE INDEX ix_jobs_phase ON public.jobs USING btree (phase, id);

CREATE INDEX ix_logins_user_at ON public.logins USING btree (user_id, at);

CREATE INDEX ix_passive_claims_member ON public.passive_claims USING btree (member_id);

CREATE INDEX ix_passive_claims_state ON public.passive_claims USING btree (state);

CREATE INDEX ix_region_writes_due ON public.region_writes USING btree (state, next_try);

CREATE UNIQUE INDEX ix_region_writes_job ON public.region_writes USING btree (job_id, region);

CREATE INDEX ix_tokens_expires_at ON public.tokens USING btree (expires_at);

CREATE INDEX ix_webhook_deliveries_member_state ON public.webhook_deliveries USING btree (member_id, state, id);

CREATE INDEX ix_webhook_deliveries_state_next ON public.webhook_deliveries USING btree (state, next_attempt_ms);

CREATE UNIQUE INDEX ux_segments_member_code ON public.segments USING btree (member_id, code_key);

ALTER TABLE ONLY public.logins
    ADD CONSTRAINT logins_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.tokens
    ADD CONSTRAINT tokens_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_member_id_fkey FOREIGN KEY (member_id) REFERENCES public.members(id) ON DELETE CASCADE;

