-- Demo data for the local default (scripts/run-local.sh): one broker, three flows; the third
-- (STORE_TABLE) keeps the latest reading per room in a table of its own, demo_room_latest.
INSERT INTO mqtt_servers (name, host, port, enabled, is_default)
SELECT 'local', '127.0.0.1', 1884, 1, 1 FROM DUAL
WHERE NOT EXISTS (SELECT 1 FROM mqtt_servers);

INSERT IGNORE INTO flows (code, name, topic, action, payload_schema, enabled) VALUES
  ('demo-temperature', 'Room temperature', 'demo/+/temperature', 'STORE_DB',
   '{"temperature": "number", "unit": "string"}', 1),
  ('demo-any', 'Everything under demo/raw', 'demo/raw/#', 'STORE_DB', NULL, 1);

-- STORE_TABLE: one row per room (the topic's second level), updated by every reading (upsert).
CREATE TABLE IF NOT EXISTS demo_room_latest (
  room        VARCHAR(64) NOT NULL PRIMARY KEY,
  temperature DECIMAL(5,2) NULL,
  unit        VARCHAR(8) NULL,
  msg_id      BIGINT NOT NULL,
  received_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

INSERT IGNORE INTO flows (code, name, topic, action, payload_schema, target_table, column_map,
                          write_mode, enabled) VALUES
  ('demo-room-latest', 'Latest temperature per room', 'demo/+/temperature', 'STORE_TABLE',
   '{"temperature": "number"}', 'demo_room_latest',
   '{"room": "$topic[1]", "temperature": "/temperature", "unit": "/unit", "msg_id": "$msg_id", "received_at": "$received_at"}',
   'upsert', 1);
