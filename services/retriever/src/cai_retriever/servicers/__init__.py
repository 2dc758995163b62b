"""gRPC servicers of the retriever."""
