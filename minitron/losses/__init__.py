"""KL divergence and next-token NLL: the one implementation of each, used by importance, eval and distill.

    reference.py   the per-token formulas on whole tensors (log-probabilities in, nats out): the
                   readable reference, and what the importance engine applies chunk by chunk
    nll.py         sums over a batch of blocks, a few rows at a time (eval's loss, the proxy's KL)
    divergence.py  the distillation objective: forward/reverse KL and JSD with temperature and
                   top-k bins, chunked with a fused backward (`kl_divergence` is what eval sums)
    topk.py        the teacher's top-k + tail bins (cached teacher logits)

`tests/test_losses.py` checks each chunked path against the reference.
"""
