-- Demo data for the local default (scripts/run-local.sh): one broker, two flows.
INSERT INTO mqtt_servers (name, host, port, enabled, is_default)
SELECT 'local', '127.0.0.1', 1884, 1, 1 FROM DUAL
WHERE NOT EXISTS (SELECT 1 FROM mqtt_servers);

INSERT IGNORE INTO flows (code, name, topic, action, payload_schema, enabled) VALUES
  ('demo-temperature', 'Room temperature', 'demo/+/temperature', 'STORE_DB',
   '{"temperature": "number", "unit": "string"}', 1),
  ('demo-any', 'Everything under demo/raw', 'demo/raw/#', 'STORE_DB', NULL, 1);
