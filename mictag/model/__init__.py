"""The reprogrammed system around a frozen backbone: the front end as a torch module (``fbank``),
the input reprogrammers, the output mappers, the baselines, and the composed model (``system``)."""
