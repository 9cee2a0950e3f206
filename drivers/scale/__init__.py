"""Retail scales on a serial line: MT-SICS and NCI/ECR codecs, an async MT-SICS client."""
