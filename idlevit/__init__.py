"""idlevit"""
