-- mqtt-gateway database schema. Idempotent: safe to apply on every start or upgrade
-- (`mqtt-gateway --init-db`, or `mariadb gw < schema.sql`).

CREATE TABLE IF NOT EXISTS mqtt_servers (
  id          INT AUTO_INCREMENT PRIMARY KEY,
  name        VARCHAR(100) NULL,
  host        VARCHAR(255) NOT NULL,
  port        INT NOT NULL DEFAULT 1883,
  username    VARCHAR(255) NULL,
  password    VARCHAR(255) NULL,
  -- TLS: when use_tls is 1 the gateway verifies the broker's certificate against ca_file.
  use_tls     TINYINT(1) NOT NULL DEFAULT 0,
  ca_file     VARCHAR(1024) NULL,
  -- With use_tls: a client certificate (PEM, may hold the key), its key (PEM; NULL: in the
  -- certificate file) and a file holding the key's password (NULL: not encrypted).
  client_cert_file          VARCHAR(1024) NULL,
  client_key_file           VARCHAR(1024) NULL,
  client_key_password_file  VARCHAR(1024) NULL,
  enabled     TINYINT(1) NOT NULL DEFAULT 1,
  is_default  TINYINT(1) NOT NULL DEFAULT 0,
  created_at  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS flows (
  id              INT AUTO_INCREMENT PRIMARY KEY,
  code            VARCHAR(100) NOT NULL,
  name            VARCHAR(255) NULL,
  topic           VARCHAR(1024) NOT NULL,
  action          VARCHAR(32) NOT NULL,
  endpoint_url    VARCHAR(2048) NULL,
  -- {"field": "type", ...}; types: string|str, number|float, int|integer, bool|boolean, object, array
  payload_schema  JSON NULL,
  last_msg_id     BIGINT NOT NULL DEFAULT 0,
  enabled         TINYINT(1) NOT NULL DEFAULT 1,
  -- STORE_TABLE: one row per message into target_table (a table of this database), its columns
  -- filled as column_map says: {"column": "source", ...}; a source is a JSON Pointer into the
  -- payload ("/temp", "/meta/site"), $topic, $topic[N], $msg_id, $flow_code, $received_at,
  -- $payload or $user_property:NAME. write_mode: insert, or upsert (ON DUPLICATE KEY UPDATE of
  -- the mapped columns). NULL / ignored for the other actions.
  target_table    VARCHAR(64) NULL,
  column_map      JSON NULL,
  write_mode      VARCHAR(16) NOT NULL DEFAULT 'insert',
  updated_at      TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  UNIQUE KEY uq_flows_code (code)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per top-level payload field; field_value is the field's JSON encoding.
CREATE TABLE IF NOT EXISTS data_records (
  id           BIGINT AUTO_INCREMENT PRIMARY KEY,
  flow_id      INT NOT NULL,
  msg_id       BIGINT NOT NULL,
  topic        VARCHAR(1024) NOT NULL,
  -- Compared as bytes, trailing spaces included (utf8mb4_bin would pad): "a", "A" and "a " are
  -- different fields. --init-db migrates tables made by older versions.
  field_name   VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
  field_value  JSON NOT NULL,
  created_at   TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  UNIQUE KEY uq_data_records_flow_msg_field (flow_id, msg_id, field_name),
  CONSTRAINT fk_data_records_flow FOREIGN KEY (flow_id) REFERENCES flows (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Dead letters: every message the gateway could not take (bad JSON, schema failure, ...).
-- flow_id is NULL when the message was rejected before a flow was chosen.
CREATE TABLE IF NOT EXISTS rejected_messages (
  id                 BIGINT AUTO_INCREMENT PRIMARY KEY,
  flow_id            INT NULL,
  topic              VARCHAR(1024) NOT NULL,
  payload            MEDIUMBLOB NOT NULL,
  payload_truncated  TINYINT(1) NOT NULL DEFAULT 0,
  reason             VARCHAR(1024) NOT NULL,
  -- POST_ENDPOINT messages given up after retries: their msg_id, tries and the last HTTP status.
  msg_id             BIGINT NULL,
  attempts           INT NULL,
  last_status        INT NULL,
  spool_id           CHAR(36) NULL,
  spool_seq          BIGINT NULL,
  created_at         TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  -- `mqtt-gateway rejected replay`: when the message was stored after all, and its new msg_id
  -- (set in the flow transaction that stored it). NULL: still a dead letter. A replay the flow
  -- refuses again updates reason and attempts instead. --init-db adds them to older tables.
  replayed_at        TIMESTAMP(6) NULL,
  replayed_msg_id    BIGINT NULL,
  KEY ix_rejected_flow_time (flow_id, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Exactly once: the last spool record each flow committed, written in the same transaction as
-- the flow's rows. After a crash the spool is replayed and records at or below last_seq skipped.
CREATE TABLE IF NOT EXISTS spool_offsets (
  spool_id    CHAR(36) NOT NULL,
  flow_id     INT NOT NULL,
  last_seq    BIGINT NOT NULL,
  updated_at  TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (spool_id, flow_id)
) ENGINE=InnoDB;

-- Outbox of POST_ENDPOINT flows: the flow transaction numbers the message and records it here in
-- the same commit; delivery workers POST it afterwards, in msg_id order per flow, and delete the
-- row once the endpoint accepted it. Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS deliveries (
  flow_id          INT NOT NULL,
  msg_id           BIGINT NOT NULL,
  topic            VARCHAR(1024) NOT NULL,
  payload          MEDIUMBLOB NOT NULL,
  attempts         INT NOT NULL DEFAULT 0,
  created_ms       BIGINT NOT NULL,
  next_attempt_ms  BIGINT NOT NULL,
  last_status      INT NULL,
  last_error       VARCHAR(1024) NULL,
  PRIMARY KEY (flow_id, msg_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Which gateway instance delivers a flow's outbox: one owner at a time in the whole cluster, so
-- that with several instances each POST happens once and in msg_id order. A lease rather than a
-- lock held by a connection (GET_LOCK) because Galera does not replicate GET_LOCK; expires_ms is
-- the database's clock (no skew between hosts). A crashed owner's lease runs out and another
-- instance takes the flow over.
CREATE TABLE IF NOT EXISTS delivery_leases (
  flow_id     INT NOT NULL PRIMARY KEY,
  owner       CHAR(32) NOT NULL,
  expires_ms  BIGINT NOT NULL
) ENGINE=InnoDB;

-- The last retained message each flow stored, per topic. The broker sends its retained copy again
-- on every SUBSCRIBE (MQTT 3.1.1 3.8.4); a retained re-send whose payload equals the one stored
-- last for that flow and topic is skipped instead of stored again. Hashes are 64-bit FNV-1a.
CREATE TABLE IF NOT EXISTS retained_messages (
  flow_id       INT NOT NULL,
  topic_hash    BIGINT NOT NULL,
  payload_hash  BIGINT NOT NULL,
  msg_id        BIGINT NOT NULL,
  topic         VARCHAR(1024) NOT NULL,
  PRIMARY KEY (flow_id, topic_hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
