"""The admin console: server-rendered pages over the store and Kafka (`contactsync console`).

Reads come from the store (setups, links, sync state, subscriptions, audit) and Kafka (dead
letters); actions publish the same `sync.commands` the CLI publishes and are audited with who
did them. See README.md "Admin console".
"""
