"""bundleserve.client"""
