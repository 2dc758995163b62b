"""cai_retriever."""
