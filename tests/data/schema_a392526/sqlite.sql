-- The schema bss.db.init_db made at a392526, the last commit before migrations (sqlite3 .schema).
CREATE TABLE members (
	id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	state VARCHAR(20) NOT NULL, 
	created_on BIGINT NOT NULL, 
	last_modified BIGINT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE segments (
	id INTEGER NOT NULL, 
	member_id INTEGER NOT NULL, 
	code VARCHAR(50), 
	code_key VARCHAR(50), 
	short_name VARCHAR(255), 
	description TEXT, 
	state VARCHAR(10) NOT NULL, 
	expire_minutes INTEGER, 
	created_on BIGINT NOT NULL, 
	last_modified BIGINT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE UNIQUE INDEX ux_segments_member_code ON segments (member_id, code_key);
CREATE TABLE segment_id_counter (
	id INTEGER NOT NULL, 
	last_id INTEGER NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE batch_segment_configs (
	id INTEGER NOT NULL, 
	member_id INTEGER NOT NULL, 
	config_json TEXT NOT NULL, 
	created_on BIGINT NOT NULL, 
	last_modified BIGINT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (member_id)
);
CREATE TABLE jobs (
	id INTEGER NOT NULL, 
	job_id VARCHAR(40) NOT NULL, 
	member_id INTEGER NOT NULL, 
	phase VARCHAR(20) NOT NULL, 
	upload_url TEXT, 
	upload_source VARCHAR(10) NOT NULL, 
	source_key TEXT, 
	created_on BIGINT NOT NULL, 
	last_modified BIGINT NOT NULL, 
	start_time BIGINT, 
	uploaded_time BIGINT, 
	validated_time BIGINT, 
	completed_time BIGINT, 
	processing_started BIGINT, 
	time_to_process VARCHAR(20), 
	percent_complete INTEGER NOT NULL, 
	error_code VARCHAR(64), 
	error_message TEXT, 
	num_valid BIGINT NOT NULL, 
	num_invalid_format BIGINT NOT NULL, 
	num_valid_user BIGINT NOT NULL, 
	num_invalid_user BIGINT NOT NULL, 
	num_invalid_segment BIGINT NOT NULL, 
	num_invalid_timestamp BIGINT NOT NULL, 
	num_unauth_segment BIGINT NOT NULL, 
	num_past_expiration BIGINT NOT NULL, 
	num_inactive_segment BIGINT NOT NULL, 
	num_other_error BIGINT NOT NULL, 
	error_log_lines TEXT, 
	segment_log_lines TEXT, 
	file_path TEXT, 
	file_bytes BIGINT NOT NULL, 
	file_lines BIGINT NOT NULL, 
	file_deleted INTEGER NOT NULL, 
	report_path TEXT, 
	lines_read BIGINT NOT NULL, 
	pairs_added BIGINT NOT NULL, 
	pairs_removed BIGINT NOT NULL, 
	claimed_until BIGINT, 
	claimed_by VARCHAR(64), 
	attempts INTEGER NOT NULL, 
	seq_base BIGINT, 
	PRIMARY KEY (id), 
	UNIQUE (job_id)
);
CREATE INDEX ix_jobs_member_modified ON jobs (member_id, last_modified);
CREATE INDEX ix_jobs_member_id ON jobs (member_id, id);
CREATE INDEX ix_jobs_phase ON jobs (phase, id);
CREATE TABLE passive_claims (
	id INTEGER NOT NULL, 
	identity VARCHAR(64) NOT NULL, 
	backend VARCHAR(16) NOT NULL, 
	location VARCHAR(1024) NOT NULL, 
	member_id BIGINT NOT NULL, 
	source_key TEXT NOT NULL, 
	fingerprint VARCHAR(256) NOT NULL, 
	size BIGINT, 
	state VARCHAR(16) NOT NULL, 
	owner VARCHAR(128), 
	lease_until DATETIME, 
	job_id VARCHAR(64), 
	job_db_id BIGINT, 
	work_key TEXT, 
	outcome VARCHAR(16), 
	dest_key TEXT, 
	error TEXT, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (identity)
);
CREATE INDEX ix_passive_claims_state ON passive_claims (state);
CREATE INDEX ix_passive_claims_member ON passive_claims (member_id);
CREATE TABLE rate_counters (
	"key" VARCHAR(300) NOT NULL, 
	window_end BIGINT NOT NULL, 
	hits INTEGER NOT NULL, 
	PRIMARY KEY ("key")
);
CREATE TABLE leases (
	name VARCHAR(300) NOT NULL, 
	holder VARCHAR(200) NOT NULL, 
	expires_at BIGINT NOT NULL, 
	PRIMARY KEY (name)
);
CREATE TABLE seq_counters (
	name VARCHAR(20) NOT NULL, 
	next_seq BIGINT NOT NULL, 
	PRIMARY KEY (name)
);
CREATE TABLE region_writes (
	id INTEGER NOT NULL, 
	region VARCHAR(40) NOT NULL, 
	job_id INTEGER, 
	batch BLOB, 
	segment_id INTEGER, 
	delete_seq BIGINT, 
	state VARCHAR(10) NOT NULL, 
	attempts INTEGER NOT NULL, 
	error TEXT, 
	next_try BIGINT NOT NULL, 
	claimed_by VARCHAR(200), 
	claimed_until BIGINT, 
	updated_at BIGINT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_region_writes_due ON region_writes (state, next_try);
CREATE UNIQUE INDEX ix_region_writes_job ON region_writes (job_id, region);
CREATE TABLE job_replays (
	job_id INTEGER NOT NULL, 
	applied_as_of BIGINT NOT NULL, 
	config_json TEXT NOT NULL, 
	registry BLOB NOT NULL, 
	PRIMARY KEY (job_id)
);
CREATE TABLE webhook_deliveries (
	id INTEGER NOT NULL, 
	delivery_id VARCHAR(36) NOT NULL, 
	member_id INTEGER NOT NULL, 
	job_id VARCHAR(40), 
	event VARCHAR(40) NOT NULL, 
	body TEXT NOT NULL, 
	state VARCHAR(10) NOT NULL, 
	attempts INTEGER NOT NULL, 
	created_on BIGINT NOT NULL, 
	first_attempt_on BIGINT, 
	last_attempt_on BIGINT, 
	next_attempt_ms BIGINT NOT NULL, 
	finished_on BIGINT, 
	url TEXT, 
	last_status_code INTEGER, 
	last_error TEXT, 
	claimed_by VARCHAR(80), 
	claimed_until BIGINT, 
	PRIMARY KEY (id), 
	UNIQUE (delivery_id)
);
CREATE INDEX ix_webhook_deliveries_state_next ON webhook_deliveries (state, next_attempt_ms);
CREATE INDEX ix_webhook_deliveries_member_state ON webhook_deliveries (member_id, state, id);
CREATE TABLE segment_loads (
	segment_id INTEGER NOT NULL, 
	day INTEGER NOT NULL, 
	loads BIGINT NOT NULL, 
	removals BIGINT NOT NULL, 
	uniques BLOB, 
	PRIMARY KEY (segment_id, day)
);
CREATE TABLE segment_load_sources (
	source VARCHAR(120) NOT NULL, 
	counted_on BIGINT NOT NULL, 
	PRIMARY KEY (source)
);
CREATE TABLE reports (
	report_id VARCHAR(32) NOT NULL, 
	member_id INTEGER NOT NULL, 
	user_id INTEGER, 
	username VARCHAR(200), 
	report_type VARCHAR(40) NOT NULL, 
	json_request TEXT NOT NULL, 
	created_on BIGINT NOT NULL, 
	start_day INTEGER NOT NULL, 
	end_day INTEGER NOT NULL, 
	format VARCHAR(10) NOT NULL, 
	result_json TEXT, 
	execution_status VARCHAR(20) NOT NULL, 
	PRIMARY KEY (report_id)
);
CREATE TABLE rt_idempotency_keys (
	member_id INTEGER NOT NULL, 
	idempotency_key VARCHAR(200) NOT NULL, 
	created_on BIGINT NOT NULL, 
	response_json TEXT, 
	PRIMARY KEY (member_id, idempotency_key)
);
CREATE TABLE users (
	id INTEGER NOT NULL, 
	username VARCHAR(200) NOT NULL, 
	password_hash VARCHAR(300) NOT NULL, 
	user_type VARCHAR(20) NOT NULL, 
	member_id INTEGER, 
	created_on BIGINT NOT NULL, 
	last_modified BIGINT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (username), 
	FOREIGN KEY(member_id) REFERENCES members (id) ON DELETE CASCADE
);
CREATE TABLE tokens (
	token_hash VARCHAR(64) NOT NULL, 
	user_id INTEGER NOT NULL, 
	expires_at BIGINT NOT NULL, 
	PRIMARY KEY (token_hash), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX ix_tokens_expires_at ON tokens (expires_at);
CREATE TABLE logins (
	id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	at BIGINT NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX ix_logins_user_at ON logins (user_id, at);
