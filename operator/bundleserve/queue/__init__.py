"""bundleserve.queue"""
