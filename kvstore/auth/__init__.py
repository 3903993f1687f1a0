"""etcd authentication and role-based access: the auth store core, its permission cache, tokens."""
