"""Benchmarks of amqp-jobs against raw aio-pika baselines on a real RabbitMQ.

Run ``python -m bench`` from the repository root (``python -m bench --help`` for the
options). Each scenario runs in its own namespace, alternates amqp-jobs and its raw
baseline round by round (ABAB...), and deletes every queue and exchange it declared.
"""
