"""vidserve's own demo text-to-video model: synthetic clips (`clips`), an adherence checker (`checker`), the parts
(`components`), the trainer (`train`) and its evaluation (`evaluate`). The trained pipeline ships in engine/weights/.
"""
