"""etcd's v3 gRPC API: where a request enters, is checked and is handed to the member."""
