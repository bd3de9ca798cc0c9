"""Processing: the process_document job and the sensors that trigger it (new objects, bucket
notifications, re-queues)."""
