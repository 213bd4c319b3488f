//! RTP clock rates of a media description's formats (for the jitter figure):
//! `a=rtpmap:<pt> <encoding>/<rate>[/<channels>]` where present, else the
//! static payload types of RFC 3551, else the usual rate of the media kind.
//! Read leniently: a malformed rtpmap line is not the relay's business (it
//! passes through untouched) and only loses its rate here.

use super::{Media, Sdp};

/// RFC 3551 tables 4 and 5: clock rates of the static payload types.
pub fn static_clock_rate(pt: u8) -> Option<u32> {
    Some(match pt {
        // PCMU, GSM, G723, DVI4/8000, LPC, PCMA, G722 (8000 by RFC 3551's
        // historical error), QCELP, CN, G728, G729.
        0 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 13 | 15 | 18 => 8000,
        6 => 16_000,
        10 | 11 => 44_100,
        16 => 11_025,
        17 => 22_050,
        // MPA, CelB, JPEG, nv, H261, MPV, MP2T, H263.
        14 | 25 | 26 | 28 | 31 | 32 | 33 | 34 => 90_000,
        _ => return None,
    })
}

/// The rate assumed for a format nothing describes: 8000 for audio (what
/// telephony audio uses), 90000 for video (every RTP video format), 0
/// (unknown: no jitter) otherwise.
pub fn default_clock_rate(kind: &str) -> u32 {
    if kind.eq_ignore_ascii_case("audio") {
        8000
    } else if kind.eq_ignore_ascii_case("video") {
        90_000
    } else {
        0
    }
}

/// `<pt> <encoding>/<rate>...` of an a=rtpmap value: (pt, rate).
fn parse_rtpmap(value: &str) -> Option<(&str, u32)> {
    let (pt, rest) = value.trim().split_once(' ')?;
    let mut parts = rest.trim().split('/');
    let _encoding = parts.next()?;
    let rate: u32 = parts.next()?.trim().parse().ok()?;
    (rate > 0 && rate <= 10_000_000).then_some((pt, rate))
}

impl Sdp {
    /// Every format of media description `m` (as written on its m= line) with
    /// its RTP clock rate.
    pub fn format_clock_rates(&self, m: &Media) -> Vec<(String, u32)> {
        let Some(section) = self.media.get(m.index) else {
            return Vec::new();
        };
        let maps: Vec<(&str, u32)> = self
            .lines
            .get(section.start..section.end)
            .unwrap_or_default()
            .iter()
            .filter_map(|r| self.text.get(r.clone()))
            .filter_map(|line| line.strip_prefix("a=rtpmap:"))
            .filter_map(parse_rtpmap)
            .collect();
        m.formats
            .iter()
            .map(|f| {
                let rate = maps
                    .iter()
                    .find(|(pt, _)| pt == f)
                    .map(|(_, r)| *r)
                    .or_else(|| f.parse::<u8>().ok().and_then(static_clock_rate))
                    .unwrap_or_else(|| default_clock_rate(&m.kind));
                (f.clone(), rate)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(sdp: &str) -> Vec<Vec<(String, u32)>> {
        let parsed = crate::sdp::parse(sdp).unwrap();
        parsed
            .media()
            .iter()
            .map(|m| parsed.format_clock_rates(m))
            .collect()
    }

    fn v(list: &[(&str, u32)]) -> Vec<(String, u32)> {
        list.iter().map(|(p, r)| (p.to_string(), *r)).collect()
    }

    #[test]
    fn rtpmap_static_and_defaults() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 96 0 9 101 97\r\n\
                   a=rtpmap:96 opus/48000/2\r\n\
                   a=rtpmap:101 telephone-event/8000\r\n\
                   a=rtpmap:97 broken\r\n\
                   m=video 4002 RTP/AVP 98 34\r\n\
                   a=rtpmap:98 H264/90000\r\n\
                   m=application 4004 UDP/BFCP *\r\n";
        assert_eq!(
            rates(sdp),
            vec![
                v(&[
                    ("96", 48_000),
                    ("0", 8000),
                    ("9", 8000),
                    ("101", 8000),
                    ("97", 8000)
                ]),
                v(&[("98", 90_000), ("34", 90_000)]),
                v(&[("*", 0)]),
            ]
        );
    }

    #[test]
    fn rtpmap_lines_of_another_section_do_not_apply() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 96\r\n\
                   m=audio 4002 RTP/AVP 96\r\n\
                   a=rtpmap:96 L16/16000\r\n";
        assert_eq!(rates(sdp), vec![v(&[("96", 8000)]), v(&[("96", 16_000)])]);
    }

    #[test]
    fn static_table() {
        assert_eq!(static_clock_rate(0), Some(8000));
        assert_eq!(static_clock_rate(8), Some(8000));
        assert_eq!(static_clock_rate(9), Some(8000));
        assert_eq!(static_clock_rate(18), Some(8000));
        assert_eq!(static_clock_rate(6), Some(16_000));
        assert_eq!(static_clock_rate(31), Some(90_000));
        assert_eq!(static_clock_rate(96), None);
    }
}
