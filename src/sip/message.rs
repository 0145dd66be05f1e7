//! SIP messages (RFC 3261 section 7): parsing from bytes, printing to bytes, and the few typed
//! views of headers a user agent server needs.
//!
//! Why hand-written: a UAS copies most headers verbatim (Via, From, To, Call-ID, CSeq,
//! Record-Route go back unchanged in every response), so the message keeps each header's raw
//! text and parses only the parameters it acts on (branch, tags, CSeq, Content-Length, URIs).
//! The SIP crates we looked at either come with their own transport and runtime or have no
//! message framer (`ezk-sip-types` leaves framing to its transport layer); the framing here is
//! small, bounded (size, header count) and fuzzed, which is what network input needs.

use std::fmt;

/// Largest message accepted (UDP datagrams and TCP frames alike). RFC 3261 lets a UAS refuse
/// larger ones; a voice call's INVITE is a few KB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most header lines accepted in one message.
pub const MAX_HEADERS: usize = 128;

/// Why bytes are not a SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("message is not UTF-8 text in its start line or headers")]
    NotText,
    #[error("no empty line ends the headers")]
    Incomplete,
    #[error("bad start line: {0:?}")]
    StartLine(String),
    #[error("bad header line: {0:?}")]
    HeaderLine(String),
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("bad Content-Length: {0:?}")]
    ContentLength(String),
    #[error("Content-Length says {declared} bytes but {actual} follow")]
    BodyLength { declared: usize, actual: usize },
    #[error("missing or bad {0} header")]
    MissingHeader(&'static str),
}

/// A SIP request method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Update,
    Prack,
    Refer,
    Notify,
    Subscribe,
    Message,
    Other(String),
}

impl Method {
    /// Parses a method token (case-sensitive, as RFC 3261 says).
    pub fn parse(token: &str) -> Method {
        match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "MESSAGE" => Method::Message,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Message => "MESSAGE",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, uri: String },
    Response { code: u16, reason: String },
}

/// One header line, its name in canonical long form (compact forms expanded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A parsed SIP request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

/// The CSeq header's sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

/// Expands a compact header name (RFC 3261 section 7.3.3 and later RFCs) and canonicalises the
/// case of the headers this gateway reads, so lookups are plain comparisons.
fn canonical_name(name: &str) -> String {
    let long = match name.to_ascii_lowercase().as_str() {
        "v" | "via" => "Via",
        "f" | "from" => "From",
        "t" | "to" => "To",
        "i" | "call-id" => "Call-ID",
        "m" | "contact" => "Contact",
        "l" | "content-length" => "Content-Length",
        "c" | "content-type" => "Content-Type",
        "k" | "supported" => "Supported",
        "s" | "subject" => "Subject",
        "e" | "content-encoding" => "Content-Encoding",
        "x" | "session-expires" => "Session-Expires",
        "o" | "event" => "Event",
        "r" | "refer-to" => "Refer-To",
        "cseq" => "CSeq",
        "max-forwards" => "Max-Forwards",
        "record-route" => "Record-Route",
        "route" => "Route",
        "require" => "Require",
        "min-se" => "Min-SE",
        "authorization" => "Authorization",
        "user-agent" => "User-Agent",
        _ => return name.to_string(),
    };
    long.to_string()
}

/// Finds the end of the header block: the index just past the empty line (CRLFCRLF, or bare
/// LFLF from lenient senders).
fn header_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Parses the start line and headers of `head` (text up to the empty line).
fn parse_head(head: &str) -> Result<(StartLine, Vec<Header>), ParseError> {
    // Unfold continuation lines (a line starting with whitespace continues the previous one).
    let mut lines: Vec<String> = Vec::new();
    for raw in head.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // A continuation needs a header line before it (not the start line).
            if lines.len() < 2 {
                return Err(ParseError::HeaderLine(line.to_string()));
            }
            if let Some(prev) = lines.last_mut() {
                prev.push(' ');
                prev.push_str(line.trim());
            }
        } else {
            lines.push(line.to_string());
        }
    }
    let mut iter = lines.into_iter();
    let first = iter.next().ok_or(ParseError::Incomplete)?;
    let start = parse_start_line(&first)?;
    let mut headers = Vec::new();
    for line in iter {
        if headers.len() >= MAX_HEADERS {
            return Err(ParseError::TooManyHeaders);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| ParseError::HeaderLine(line.clone()))?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ParseError::HeaderLine(line.clone()));
        }
        headers.push(Header {
            name: canonical_name(name),
            value: value.trim().to_string(),
        });
    }
    Ok((start, headers))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    let bad = || ParseError::StartLine(line.chars().take(120).collect());
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().map_err(|_| bad())?;
        if !(100..=699).contains(&code) {
            return Err(bad());
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_string(),
        });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if version != "SIP/2.0" || method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(bad());
    }
    if !uri.contains(':') {
        return Err(bad());
    }
    Ok(StartLine::Request {
        method: Method::parse(method),
        uri: uri.to_string(),
    })
}

impl SipMessage {
    /// Parses one whole message (a UDP datagram). The body must be exactly as long as
    /// Content-Length says (a missing Content-Length on UDP means "the rest of the datagram");
    /// bytes beyond it are ignored, as RFC 3261 section 18.3 says.
    pub fn parse(buf: &[u8]) -> Result<SipMessage, ParseError> {
        if buf.len() > MAX_MESSAGE_BYTES {
            return Err(ParseError::TooLarge);
        }
        // Keep-alives (CRLF pings, RFC 5626) and leading blank lines are not messages.
        let start = buf
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .ok_or(ParseError::Incomplete)?;
        let buf = &buf[start..];
        let end = header_end(buf).ok_or(ParseError::Incomplete)?;
        let head = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError::NotText)?;
        let (start, headers) = parse_head(head)?;
        let rest = &buf[end..];
        let mut msg = SipMessage {
            start,
            headers,
            body: Vec::new(),
        };
        let body_len = match msg.content_length()? {
            Some(declared) if declared > rest.len() => {
                return Err(ParseError::BodyLength {
                    declared,
                    actual: rest.len(),
                })
            }
            Some(declared) => declared,
            None => rest.len(),
        };
        msg.body = rest[..body_len].to_vec();
        Ok(msg)
    }

    /// The Content-Length header's value, if present.
    pub fn content_length(&self) -> Result<Option<usize>, ParseError> {
        match self.header("Content-Length") {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map(Some)
                .map_err(|_| ParseError::ContentLength(v.to_string())),
        }
    }

    /// A new request with no headers.
    pub fn request(method: Method, uri: impl Into<String>) -> SipMessage {
        SipMessage {
            start: StartLine::Request {
                method,
                uri: uri.into(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A response to `request` (RFC 3261 section 8.2.6): Via, From, To, Call-ID and CSeq copied
    /// verbatim, `to_tag` added to To when it has none (never for 100 Trying).
    pub fn response_to(
        request: &SipMessage,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
    ) -> SipMessage {
        let mut resp = SipMessage {
            start: StartLine::Response {
                code,
                reason: reason.to_string(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        };
        for h in &request.headers {
            match h.name.as_str() {
                "Via" | "From" | "Call-ID" | "CSeq" => resp.headers.push(h.clone()),
                "To" => {
                    let mut value = h.value.clone();
                    if let Some(tag) = to_tag {
                        if code > 100 && param_of(&h.value, "tag").is_none() {
                            value.push_str(";tag=");
                            value.push_str(tag);
                        }
                    }
                    resp.headers.push(Header {
                        name: "To".into(),
                        value,
                    });
                }
                _ => {}
            }
        }
        resp
    }

    /// Appends a header.
    pub fn push(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.headers.push(Header {
            name: name.to_string(),
            value: value.into(),
        });
        self
    }

    /// Sets the body and its Content-Type.
    pub fn set_body(&mut self, content_type: &str, body: Vec<u8>) -> &mut Self {
        self.headers.retain(|h| h.name != "Content-Type");
        self.push("Content-Type", content_type);
        self.body = body;
        self
    }

    /// Prints the message; Content-Length is always written last, from the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(512 + self.body.len());
        match &self.start {
            StartLine::Request { method, uri } => {
                out.push_str(&format!("{method} {uri} SIP/2.0\r\n"));
            }
            StartLine::Response { code, reason } => {
                out.push_str(&format!("SIP/2.0 {code} {reason}\r\n"));
            }
        }
        for h in self.headers.iter().filter(|h| h.name != "Content-Length") {
            out.push_str(&h.name);
            out.push_str(": ");
            out.push_str(&h.value);
            out.push_str("\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// The first header called `name` (canonical long form).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every value of header `name`, comma-separated lists split (outside quotes and `<>`).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| split_list(&h.value))
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID").filter(|v| !v.is_empty())
    }

    pub fn cseq(&self) -> Option<CSeq> {
        let v = self.header("CSeq")?;
        let mut parts = v.split_whitespace();
        let seq = parts.next()?.parse().ok()?;
        let method = Method::parse(parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(CSeq { seq, method })
    }

    /// The topmost Via value.
    pub fn top_via(&self) -> Option<&str> {
        self.header_values("Via").next()
    }

    /// The topmost Via's branch parameter.
    pub fn via_branch(&self) -> Option<&str> {
        self.top_via().and_then(|v| param_of(v, "branch"))
    }

    pub fn from_tag(&self) -> Option<&str> {
        self.header("From").and_then(|v| param_of(v, "tag"))
    }

    pub fn to_tag(&self) -> Option<&str> {
        self.header("To").and_then(|v| param_of(v, "tag"))
    }

    /// Checks the headers every request needs to be answered (RFC 3261 section 8.1.1).
    pub fn validate_request(&self) -> Result<(), ParseError> {
        if self.top_via().is_none() {
            return Err(ParseError::MissingHeader("Via"));
        }
        if self.header("From").is_none() {
            return Err(ParseError::MissingHeader("From"));
        }
        if self.header("To").is_none() {
            return Err(ParseError::MissingHeader("To"));
        }
        if self.call_id().is_none() {
            return Err(ParseError::MissingHeader("Call-ID"));
        }
        match (self.cseq(), self.method()) {
            (Some(cseq), Some(method)) if &cseq.method == method => Ok(()),
            (Some(_), Some(Method::Ack)) => Err(ParseError::MissingHeader("CSeq")),
            _ => Err(ParseError::MissingHeader("CSeq")),
        }
    }

    /// Whether the request can be answered at all: a response needs the Via, From, To, Call-ID
    /// and CSeq it copies. Without them the request is dropped.
    pub fn answerable(&self) -> bool {
        self.top_via().is_some()
            && self.header("From").is_some()
            && self.header("To").is_some()
            && self.call_id().is_some()
            && self.header("CSeq").is_some()
    }
}

/// Splits a header value at top-level commas (not inside quotes or `<...>`).
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty())
}

/// The header parameters of a name-addr or Via value (after `>` when there is one, else after
/// the first `;`), case-insensitive names.
pub fn param_of<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value.split_once(';').map_or("", |(_, p)| p),
    };
    params
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .find_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().trim_matches('"'))
        })
}

/// The URI inside a name-addr (`"Bob" <sip:bob@host>;tag=1` -> `sip:bob@host`), or the
/// addr-spec before its header parameters.
pub fn uri_of(value: &str) -> &str {
    if let (Some(a), Some(b)) = (value.find('<'), value.find('>')) {
        if a < b {
            return value[a + 1..b].trim();
        }
    }
    value.split(';').next().unwrap_or(value).trim()
}

/// The parts of a SIP URI the gateway uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri<'a> {
    pub user: Option<&'a str>,
    pub host: &'a str,
    pub port: Option<u16>,
    /// The `transport` URI parameter, lower-cased by the caller when compared.
    pub transport: Option<&'a str>,
    /// Whether the URI has the `lr` (loose routing) parameter.
    pub loose_route: bool,
}

/// Parses `sip:user@host:port;params` (also `sips:` and `tel:`-less forms); None when not a SIP
/// URI.
pub fn parse_sip_uri(uri: &str) -> Option<SipUri<'_>> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let rest = rest.split('?').next().unwrap_or(rest);
    let mut parts = rest.split(';');
    let userhost = parts.next()?;
    let (user, hostport) = match userhost.rsplit_once('@') {
        Some((u, h)) => (Some(u.split(':').next().unwrap_or(u)), h),
        None => (None, userhost),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None => None,
        };
        (h, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse().ok()?)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let mut transport = None;
    let mut loose_route = false;
    for p in parts {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        if k.eq_ignore_ascii_case("transport") {
            transport = Some(v);
        } else if k.eq_ignore_ascii_case("lr") {
            loose_route = true;
        }
    }
    Some(SipUri {
        user,
        host,
        port,
        transport,
        loose_route,
    })
}

/// Incremental framing of a SIP byte stream (TCP, RFC 3261 section 18.3): Content-Length is
/// mandatory there, and one bad frame closes the connection (the stream cannot resynchronise).
///
/// Bounded and linear, because a peer controls the pace and the numbers: a frame (head plus
/// the body its Content-Length declares, computed with checked arithmetic) larger than
/// [`MAX_MESSAGE_BYTES`] is [`ParseError::TooLarge`] before any body byte is awaited; the search
/// for the empty line resumes where the last one stopped, and a parsed head is kept while its
/// body arrives, so a header dribbled one byte at a time costs O(n), not O(n^2).
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
    /// Where the search for the end of the head resumes (bytes before it hold no terminator).
    scan_from: usize,
    /// The parsed head of the frame whose body is still arriving, with the body's start and
    /// length.
    pending: Option<(SipMessage, usize, usize)>,
    /// Bytes examined by the head search so far (a linearity check for tests and metrics).
    scanned: u64,
}

impl StreamFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether part of a message (beyond keep-alive line breaks) is buffered: the connection
    /// owes us the rest, which a header-completion deadline can bound.
    /// Meant for after [`StreamFramer::next_message`] returned `Ok(None)` (which drops the
    /// keep-alive line breaks before a message).
    pub fn has_partial(&self) -> bool {
        self.pending.is_some() || self.buf.first().is_some_and(|&b| b != b'\r' && b != b'\n')
    }

    /// How many bytes the head search has examined in total.
    pub fn scanned_bytes(&self) -> u64 {
        self.scanned
    }

    /// The next complete message, `Ok(None)` when more bytes are needed, or the error that makes
    /// the stream unusable.
    pub fn next_message(&mut self) -> Result<Option<SipMessage>, ParseError> {
        if self.pending.is_none() {
            // Keep-alive CRLFs between messages.
            let skip = self
                .buf
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(self.buf.len());
            if skip > 0 {
                self.buf.drain(..skip);
                self.scan_from = self.scan_from.saturating_sub(skip);
            }
            if self.buf.is_empty() {
                return Ok(None);
            }
            let Some(end) = self.find_head_end() else {
                if self.buf.len() > MAX_MESSAGE_BYTES {
                    return Err(ParseError::TooLarge);
                }
                return Ok(None);
            };
            if end > MAX_MESSAGE_BYTES {
                return Err(ParseError::TooLarge);
            }
            let head = std::str::from_utf8(&self.buf[..end]).map_err(|_| ParseError::NotText)?;
            let (start, headers) = parse_head(head)?;
            let msg = SipMessage {
                start,
                headers,
                body: Vec::new(),
            };
            let len = msg
                .content_length()?
                .ok_or(ParseError::MissingHeader("Content-Length"))?;
            match end.checked_add(len) {
                Some(total) if total <= MAX_MESSAGE_BYTES => {}
                _ => return Err(ParseError::TooLarge),
            }
            self.pending = Some((msg, end, len));
        }
        let Some((_, end, len)) = &self.pending else {
            return Ok(None);
        };
        // Checked above: `end + len <= MAX_MESSAGE_BYTES`.
        let total = end + len;
        if self.buf.len() < total {
            return Ok(None);
        }
        let Some((mut msg, end, _)) = self.pending.take() else {
            return Ok(None);
        };
        msg.body = self.buf[end..total].to_vec();
        self.buf.drain(..total);
        self.scan_from = 0;
        Ok(Some(msg))
    }

    /// The end of the head (after its empty line, as [`header_end`] finds it), resuming the
    /// search where the previous call stopped. A terminator starts at an LF and spans at most
    /// three bytes, so only the last two bytes examined are looked at again.
    fn find_head_end(&mut self) -> Option<usize> {
        let from = self.scan_from.min(self.buf.len());
        let found = header_end(&self.buf[from..]).map(|e| from + e);
        let examined = self.buf.len() - from;
        self.scanned = self.scanned.saturating_add(examined as u64);
        if found.is_none() {
            self.scan_from = self.buf.len().saturating_sub(2);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:support@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-0;rport\r\n\
v: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKold\r\n\
From: \"Caller, Jr\" <sip:caller@127.0.0.1:5061>;tag=abc\r\n\
t: <sip:support@127.0.0.1:5060>\r\n\
i: 1-2@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:caller@127.0.0.1:5061;transport=udp>\r\n\
Record-Route: <sip:proxy1;lr>, <sip:proxy2;lr>\r\n\
Subject: long\r\n  folded\r\n\
c: application/sdp\r\n\
l: 4\r\n\
\r\n\
v=0\r";

    #[test]
    fn parses_request_with_compact_and_folded_headers() {
        let m = SipMessage::parse(INVITE.as_bytes()).unwrap();
        assert_eq!(m.method(), Some(&Method::Invite));
        assert_eq!(m.request_uri(), Some("sip:support@127.0.0.1:5060"));
        assert_eq!(m.call_id(), Some("1-2@127.0.0.1"));
        assert_eq!(m.via_branch(), Some("z9hG4bK-1-0"));
        assert_eq!(m.header_values("Via").count(), 2);
        assert_eq!(m.from_tag(), Some("abc"));
        assert_eq!(m.to_tag(), None);
        assert_eq!(m.header("Subject"), Some("long folded"));
        assert_eq!(m.body, b"v=0\r");
        assert_eq!(
            m.cseq(),
            Some(CSeq {
                seq: 1,
                method: Method::Invite
            })
        );
        let rr: Vec<_> = m.header_values("Record-Route").collect();
        assert_eq!(rr, vec!["<sip:proxy1;lr>", "<sip:proxy2;lr>"]);
        m.validate_request().unwrap();
    }

    #[test]
    fn response_copies_dialog_headers_and_adds_tag() {
        let m = SipMessage::parse(INVITE.as_bytes()).unwrap();
        let r = SipMessage::response_to(&m, 200, "OK", Some("xyz"));
        let bytes = r.to_bytes();
        let back = SipMessage::parse(&bytes).unwrap();
        assert_eq!(back.status(), Some(200));
        assert_eq!(back.to_tag(), Some("xyz"));
        assert_eq!(back.header_values("Via").count(), 2);
        assert_eq!(back.content_length(), Ok(Some(0)));
        let trying = SipMessage::response_to(&m, 100, "Trying", Some("xyz"));
        assert_eq!(trying.to_tag(), None);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(SipMessage::parse(b"").is_err());
        assert!(SipMessage::parse(b"\r\n\r\n").is_err());
        assert!(matches!(
            SipMessage::parse(b"HELLO\r\n\r\n"),
            Err(ParseError::StartLine(_))
        ));
        assert!(matches!(
            SipMessage::parse(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 10\r\n\r\nabc"),
            Err(ParseError::BodyLength { .. })
        ));
        assert!(matches!(
            SipMessage::parse(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: x\r\n\r\n"),
            Err(ParseError::ContentLength(_))
        ));
        assert!(matches!(
            SipMessage::parse(b"OPTIONS sip:a SIP/2.0\r\nno colon\r\n\r\n"),
            Err(ParseError::HeaderLine(_))
        ));
        let huge = vec![b'a'; MAX_MESSAGE_BYTES + 1];
        assert_eq!(SipMessage::parse(&huge), Err(ParseError::TooLarge));
        let m = SipMessage::parse(b"OPTIONS sip:a SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n").unwrap();
        assert!(m.validate_request().is_err());
        assert!(!m.answerable());
    }

    #[test]
    fn stream_framer_splits_and_joins() {
        let one = SipMessage::parse(INVITE.as_bytes()).unwrap().to_bytes();
        let mut f = StreamFramer::new();
        let mut all = b"\r\n\r\n".to_vec();
        all.extend_from_slice(&one);
        all.extend_from_slice(&one);
        for chunk in all.chunks(7) {
            f.push(chunk);
        }
        assert!(f.next_message().unwrap().is_some());
        assert!(f.next_message().unwrap().is_some());
        assert!(f.next_message().unwrap().is_none());
        let mut f = StreamFramer::new();
        f.push(b"OPTIONS sip:a SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n");
        assert_eq!(
            f.next_message(),
            Err(ParseError::MissingHeader("Content-Length"))
        );
    }

    /// Regression (fuzz target `sip_message`, issue 20): a Content-Length of `u64::MAX`
    /// overflowed `end + len` and panicked the connection's reader task.
    #[test]
    fn stream_framer_refuses_a_content_length_that_overflows() {
        for len in [
            u64::MAX.to_string(),
            (usize::MAX - 10).to_string(),
            "65536".into(),
        ] {
            let mut f = StreamFramer::new();
            f.push(
                format!(
                    "OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK1\r\n\
                     From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: x\r\n\
                     CSeq: 1 OPTIONS\r\nContent-Length: {len}\r\n\r\n"
                )
                .as_bytes(),
            );
            let r = f.next_message();
            assert!(
                matches!(r, Err(ParseError::TooLarge | ParseError::ContentLength(_))),
                "{len}: {r:?}"
            );
        }
    }

    /// A 60 KB header dribbled one byte at a time is searched once, not once per byte, and a
    /// body dribbled after it does not re-parse the head.
    #[test]
    fn stream_framer_is_linear_in_a_dribbled_message() {
        let filler = format!("X-Filler: {}\r\n", "a".repeat(60_000));
        let msg = format!(
            "OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n{filler}\
             Content-Length: 3000\r\n\r\n{}",
            "b".repeat(3000)
        );
        let mut f = StreamFramer::new();
        let mut got = None;
        for (i, b) in msg.as_bytes().iter().enumerate() {
            f.push(std::slice::from_ref(b));
            match f.next_message().unwrap() {
                Some(m) => {
                    assert_eq!(i + 1, msg.len(), "framed before the end");
                    got = Some(m);
                }
                None => assert!(f.has_partial()),
            }
        }
        let m = got.expect("the message");
        assert_eq!(m.body.len(), 3000);
        assert!(!f.has_partial());
        // Each byte is examined about once (plus two bytes of overlap per call), never the
        // whole partial head again: quadratic would be ~1.8e9.
        let head = (msg.len() - 3000) as u64;
        assert!(f.scanned_bytes() <= 3 * head + 3, "{}", f.scanned_bytes());
        // And it still frames what follows on the same stream.
        f.push(b"\r\n\r\n");
        assert!(f.next_message().unwrap().is_none());
        assert!(!f.has_partial());
        f.push(msg.as_bytes());
        assert!(f.next_message().unwrap().is_some());
    }

    #[test]
    fn stream_framer_finds_a_terminator_split_across_pushes() {
        let one = SipMessage::parse(INVITE.as_bytes()).unwrap().to_bytes();
        for split in 1..one.len() {
            let mut f = StreamFramer::new();
            f.push(&one[..split]);
            let first = f.next_message().unwrap();
            f.push(&one[split..]);
            let m = match first {
                Some(m) => m,
                None => f.next_message().unwrap().expect("framed after the rest"),
            };
            assert_eq!(m.body, b"v=0\r");
        }
        // Bare LFs too.
        let mut f = StreamFramer::new();
        for chunk in [&b"OPTIONS sip:a SIP/2.0\nContent-Length: 0\n"[..], b"\n"] {
            f.push(chunk);
        }
        assert!(f.next_message().unwrap().is_some());
    }

    #[test]
    fn uris_and_params() {
        assert_eq!(uri_of("\"A\" <sip:a@b;lr>;tag=1"), "sip:a@b;lr");
        assert_eq!(uri_of("sip:a@b;tag=1"), "sip:a@b");
        let u = parse_sip_uri("sip:support@127.0.0.1:5070;transport=TCP;lr").unwrap();
        assert_eq!(u.user, Some("support"));
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport, Some("TCP"));
        assert!(u.loose_route);
        let v6 = parse_sip_uri("sip:[::1]:5060").unwrap();
        assert_eq!((v6.host, v6.port), ("::1", Some(5060)));
        assert!(parse_sip_uri("tel:+123").is_none());
        assert!(parse_sip_uri("sip:a@b:notaport").is_none());
        assert_eq!(param_of("SIP/2.0/UDP h;branch=z9;rport", "RPORT"), Some(""));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let base = INVITE.as_bytes().to_vec();
        for i in 0..5000 {
            let mut buf = base.clone();
            for _ in 0..(next() % 8) {
                let pos = (next() as usize) % buf.len();
                buf[pos] = next() as u8;
            }
            if i % 3 == 0 {
                let cut = (next() as usize) % buf.len();
                buf.truncate(cut);
            }
            if let Ok(m) = SipMessage::parse(&buf) {
                let _ = m.validate_request();
                let _ = m.cseq();
                let _ = m.via_branch();
                let _ = SipMessage::parse(&m.to_bytes());
            }
            let mut f = StreamFramer::new();
            f.push(&buf);
            let _ = f.next_message();
        }
    }
}
