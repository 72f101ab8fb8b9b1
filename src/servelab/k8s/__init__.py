"""Kubernetes without a cluster: offline manifest validation, what the autoscalers read, the HPA v2
algorithm, and Kubernetes quantities (notebooks 02, 03, 06, 07 and lab 01).
"""
