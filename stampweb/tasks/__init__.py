"""RQ jobs. Jobs are thin: they load ids, set the tenant and call one service."""
