"""Commands around the pipeline: predict, local servers, the run lock, multi-worker launcher."""
