#!/usr/bin/env bash
# LocalStack init hook (mounted into /etc/localstack/init/ready.d by docker-compose.yml): once
# LocalStack is ready, create cloudlog's queue and its dead-letter queue with a redrive policy,
# with exactly the names and attributes of cloudlog_wire.broker.ensure_queues, so that either may run
# first and the other still succeeds (CreateQueue is idempotent only for identical attributes).
set -euo pipefail

queue=${CLOUDLOG_QUEUE_NAME:-cloudlog}
dlq=${CLOUDLOG_DEAD_LETTER_QUEUE_NAME:-cloudlog-dlq}
visibility_timeout=${CLOUDLOG_VISIBILITY_TIMEOUT:-900}
max_receive_count=${CLOUDLOG_MAX_RECEIVE_COUNT:-5}
dlq_retention=1209600 # 14 days, the SQS maximum: the dead-letter queue keeps its messages longest

if command -v awslocal >/dev/null 2>&1; then
  sqs() { awslocal sqs "$@"; }
elif command -v aws >/dev/null 2>&1; then
  sqs() { aws --endpoint-url "${LOCALSTACK_ENDPOINT:-http://localhost:4566}" sqs "$@"; }
else
  echo "cloudlog queues: neither awslocal nor aws is installed in this image" >&2
  exit 1
fi

dlq_url=$(sqs create-queue --queue-name "$dlq" \
  --attributes "MessageRetentionPeriod=$dlq_retention" --query QueueUrl --output text)
dlq_arn=$(sqs get-queue-attributes --queue-url "$dlq_url" \
  --attribute-names QueueArn --query Attributes.QueueArn --output text)

# The RedrivePolicy string as Python's json.dumps writes it (", " and ": "): SQS compares the
# attribute as a string when the queue already exists.
redrive_policy="{\\\"deadLetterTargetArn\\\": \\\"$dlq_arn\\\", \\\"maxReceiveCount\\\": \\\"$max_receive_count\\\"}"
attributes="{\"VisibilityTimeout\": \"$visibility_timeout\", \"RedrivePolicy\": \"$redrive_policy\"}"
queue_url=$(sqs create-queue --queue-name "$queue" --attributes "$attributes" \
  --query QueueUrl --output text)

echo "cloudlog queues ready: $queue_url (dead letters: $dlq_url)"
