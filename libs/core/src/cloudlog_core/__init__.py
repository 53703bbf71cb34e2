"""Shared by every cloudlog component: AWS endpoint settings, CloudWatch name rules, logging."""
