#![no_main]
//! Fuzz target: link-layer frames from capture files never panic the parser.
use libfuzzer_sys::fuzz_target;
use mirror_daemon::capture::pcap::parse_frame;

fuzz_target!(|data: &[u8]| {
    for link in [pcap_file::DataLink::ETHERNET, pcap_file::DataLink::LINUX_SLL, pcap_file::DataLink::RAW] {
        let _ = parse_frame(link, data);
    }
});
