"""The two runtimes that wire stages to topics: embedded (in-process bus) and Kafka (faust)."""
