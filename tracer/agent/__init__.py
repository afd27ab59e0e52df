"""(filled in by this session)"""
