"""etcd's JSON gateway (grpc-gateway) over the gRPC servicers: routes, JSON codec, in-process calls."""
