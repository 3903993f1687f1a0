"""The journal: ordered, durable logs (one per partition) that members tail."""
