"""Object-created events, wherever they come from, and what the event-driven path does with them.

Three sources feed the event-driven path: bucket notifications on an SQS queue, remediation's
re-queue (the `integrity_queue` table and its SQS outbox), and a bounded poll of the bucket
listing for when notifications are not set up or get lost. The modules, by concern:

- `messages`: notification bodies (S3, SNS-wrapped S3, R2, re-queue) parsed into object events;
- `filters`: which events get a run (key filter, bucket, event type), one admission per message;
- `sqs`: the few SQS calls the sensors make, with readable errors;
- `cursors`: what a sensor keeps between ticks (the inbox hand-over, the poll's place);
- `poll`: the bounded listing poll, and which keys the database already knows;
- `settings`: the path's settings, read from an environment mapping in one function.

The Dagster sensors in `integrity.defs.processing.sensors` only wire these in; nothing here
imports Dagster. Every trigger is an alarm clock, not an order: the processor looks at the state
and decides, so a duplicated, late or out-of-order event costs at most a run that does nothing.
"""
