"""Workaround: make the generated message classes picklable by reference.

Ray Serve's gRPC proxy pickles each request message to send it to the replica, and the replica's
response comes back the same way. The generated module registers its classes under the proto
package path `minimax.m1.v1.generation_pb2`, which is not importable (the stubs live in
`minimax_m1._generated`), so pickling fails. Until the generator writes the importable module
name, this points each class's `__module__` at the module that really holds it.

It must run in the replica (imported by minimax_m1.serving.app) and in Serve's proxy: the proxy
runs every entry of gRPCOptions.grpc_servicer_functions, so `fix_module_names` is listed there.
"""
from __future__ import annotations


def fix_module_names(servicer=None, server=None) -> None:
    """Idempotent; the signature is that of a gRPC servicer-adding function (it adds nothing)."""
    from minimax_m1._generated import generation_pb2 as pb

    for name in pb.DESCRIPTOR.message_types_by_name:
        cls = getattr(pb, name)
        if cls.__module__ != pb.__name__:
            cls.__module__ = pb.__name__
