"""bundleserve.gateway"""
