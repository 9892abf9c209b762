"""Where packets come from: capture files (pcap, pcapng), NFLOG, and an AF_PACKET socket with a
BPF program; each hands the pipeline (timestamp, link type, frame) records."""
