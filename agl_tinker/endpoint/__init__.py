"""The policy endpoint agents call: an OpenAI-compatible server over a Tinker ``SamplingClient``.

It renders each chat request with the cookbook's renderer, samples, parses the reply (tool calls
included) and records one span per call with the token ids and logprobs the core trains on.
"""
