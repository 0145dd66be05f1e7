//! SIP messages (RFC 3261 section 7): parsing from bytes, printing to bytes, and the few typed
//! views of headers a user agent server needs.
//!
//! Why hand-written: a UAS copies most headers verbatim (Via, From, To, Call-ID, CSeq,
//! Record-Route go back unchanged in every response), so the message keeps each header's raw
//! text and parses only the parameters it acts on (branch, tags, CSeq, Content-Length, URIs).
//! The SIP crates we looked at either come with their own transport and runtime or have no
//! message framer (`ezk-sip-types` leaves framing to its transport layer); the framing here is
//! small, bounded (size, header count) and fuzzed, which is what network input needs.
//!
//! Parsing refuses only what cannot be framed or read; judging a request is a separate step
//! ([`SipMessage::validate_request`]), so that an invalid request whose Via can be read is
//! answered (400, 505) rather than dropped, and the sender stops retransmitting. A request
//! line that breaks the grammar is kept verbatim ([`StartLine::BadRequest`]) for that reason.
//! The rules follow RFC 3261's grammar where the gateway copies or reads a field, and RFC
//! 4475's torture messages (tests/rfc4475) where the RFC allows a choice.

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
    #[error("more than one {0} header")]
    Duplicate(&'static str),
}

/// Why a request line does not follow RFC 3261's grammar (section 25.1); the message is still
/// parsed, so that a request whose Via can be read gets an answer instead of silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestLineError {
    /// Not `Method SP Request-URI SP SIP-Version`, with one SP each (RFC 4475 3.1.2.8-10).
    Syntax,
    /// A SIP version other than 2.0 (answered 505, RFC 4475 3.1.2.16).
    Version,
    /// The Request-URI is not a URI, or a SIP URI that is malformed or carries headers (RFC
    /// 4475 3.1.2.7, 3.1.2.11).
    Uri,
}

/// Why a parsed request cannot be processed (RFC 3261 8.2): answered with [`status`], 400 Bad
/// Request unless said otherwise, before any transaction exists.
///
/// [`status`]: RequestError::status
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request line")]
    RequestLine,
    #[error("SIP version not supported")]
    Version,
    #[error("malformed Request-URI")]
    RequestUri,
    #[error("missing or bad {0} header")]
    Missing(&'static str),
    #[error("more than one {0} header")]
    Duplicate(&'static str),
    #[error("malformed {0} header")]
    Malformed(&'static str),
    #[error("CSeq method does not match the request method")]
    CSeqMethod,
}

impl RequestError {
    /// The status code that answers the request.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Version => 505,
            _ => 400,
        }
    }
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
    Request {
        method: Method,
        uri: String,
    },
    Response {
        code: u16,
        reason: String,
    },
    /// A line that reads as a request line (it ends in a `SIP/` version) but breaks the grammar:
    /// kept verbatim (printed back as it came) so the request can still be answered 400 or 505.
    BadRequest {
        line: String,
        /// The first token when it is a method token (so an ACK is never answered).
        method: Option<Method>,
        error: RequestLineError,
    },
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
        if code.len() != 3 {
            return Err(bad());
        }
        let code: u16 = code.parse().map_err(|_| bad())?;
        if !(100..=699).contains(&code) {
            return Err(bad());
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_string(),
        });
    }
    // Only a line ending in a SIP version is taken for a (possibly malformed) request line;
    // anything else is not SIP at all.
    let last = line
        .trim_end_matches([' ', '\t'])
        .rsplit([' ', '\t'])
        .next()
        .unwrap_or("");
    let versioned = last.len() > 4
        && last
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"));
    if line.starts_with("SIP/") || !versioned {
        return Err(bad());
    }
    let first = line.split([' ', '\t']).next().unwrap_or("");
    let malformed = |error| {
        Ok(StartLine::BadRequest {
            line: line.to_string(),
            method: (!first.is_empty() && first.bytes().all(is_token_byte))
                .then(|| Method::parse(first)),
            error,
        })
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return malformed(RequestLineError::Syntax);
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) || uri.is_empty() {
        return malformed(RequestLineError::Syntax);
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return malformed(RequestLineError::Version);
    }
    if !request_uri_ok(uri) {
        return malformed(RequestLineError::Uri);
    }
    Ok(StartLine::Request {
        method: Method::parse(method),
        uri: uri.to_string(),
    })
}

/// The scheme of an absolute URI (`scheme ":" ...`, RFC 3986 section 3.1), lower-cased by
/// the caller when compared; None when `uri` does not start with one.
pub fn uri_scheme(uri: &str) -> Option<&str> {
    let (scheme, rest) = uri.split_once(':')?;
    let mut bytes = scheme.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
    (first_ok
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty())
    .then_some(scheme)
}

/// Whether `uri` can be a Request-URI: an absolute URI of printable ASCII without the
/// characters that delimit it in a message (space, `<`, `>`, `"`); a `sip:`/`sips:` URI must
/// parse and carry no headers (RFC 3261 19.1.1: headers are not allowed in a Request-URI).
fn request_uri_ok(uri: &str) -> bool {
    if !uri
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"<>\"".contains(&b))
    {
        return false;
    }
    let Some(scheme) = uri_scheme(uri) else {
        return false;
    };
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        return parse_sip_uri(uri).is_some_and(|u| !u.has_headers && host_ok(u.host));
    }
    true
}

/// A hostname, IPv4 address or (bracket-less) IPv6 reference as `parse_sip_uri` returns it.
fn host_ok(host: &str) -> bool {
    !host.is_empty()
        && (host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            || (host.contains(':')
                && host
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))))
}

impl SipMessage {
    /// Parses one whole message (a UDP datagram). The body must be exactly as long as
    /// Content-Length says (a missing Content-Length on UDP means "the rest of the datagram");
    /// bytes beyond it are ignored, as RFC 3261 section 18.3 says. A datagram whose last
    /// header line ends the datagram without the empty line is taken as a message without a
    /// body (a datagram cannot continue; RFC 4475's `baddn` arrives so).
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
        let end = match header_end(buf) {
            Some(end) => end,
            None if buf.ends_with(b"\n") => buf.len(),
            None => return Err(ParseError::Incomplete),
        };
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

    /// The Content-Length header's value, if present: digits only (no sign), and only one
    /// such header, since two leave the body's end unknown (RFC 4475 3.3.9; on a stream the
    /// framing is lost, so the error closes the connection).
    pub fn content_length(&self) -> Result<Option<usize>, ParseError> {
        if self.header_count("Content-Length") > 1 {
            return Err(ParseError::Duplicate("Content-Length"));
        }
        match self.header("Content-Length") {
            None => Ok(None),
            Some(v) => {
                let digits = v.trim();
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParseError::ContentLength(v.chars().take(40).collect()));
                }
                digits
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|_| ParseError::ContentLength(v.chars().take(40).collect()))
            }
        }
    }

    /// How many header lines called `name` (canonical long form) the message has.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
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
            StartLine::BadRequest { line, .. } => {
                out.push_str(line);
                out.push_str("\r\n");
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

    /// The request's method; for a malformed request line, its first token when that is a
    /// method token.
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::BadRequest { method, .. } => method.as_ref(),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } | StartLine::BadRequest { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } | StartLine::BadRequest { .. } => None,
        }
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID").filter(|v| !v.is_empty())
    }

    pub fn cseq(&self) -> Option<CSeq> {
        let v = self.header("CSeq")?;
        let mut parts = v.split_whitespace();
        let seq = parts.next()?;
        if !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let seq = seq.parse().ok()?;
        let method = parts.next()?;
        if !method.bytes().all(is_token_byte) {
            return None;
        }
        let method = Method::parse(method);
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

    /// Checks what a request needs before anything acts on it (RFC 3261 8.1.1, 8.2, 20, and
    /// the invalid messages of RFC 4475 3.1.2 and 3.3): a well-formed request line; the
    /// headers a response copies, each once where the grammar allows one; Via, From, To and
    /// Contact values that follow their grammar (balanced quotes, no empty parameters or list
    /// elements, an addr-spec with `?` or `,` only inside `<>`); a CSeq number that fits 32
    /// bits. Whether the CSeq method matches is checked apart ([`cseq_matches`]), because an
    /// unknown method is answered 501 first. Fields the gateway does not use (Date, Expires,
    /// unknown headers) are not judged.
    ///
    /// [`cseq_matches`]: SipMessage::cseq_matches
    pub fn validate_request(&self) -> Result<(), RequestError> {
        match &self.start {
            StartLine::BadRequest { error, .. } => {
                return Err(match error {
                    RequestLineError::Syntax => RequestError::RequestLine,
                    RequestLineError::Version => RequestError::Version,
                    RequestLineError::Uri => RequestError::RequestUri,
                })
            }
            StartLine::Response { .. } => return Err(RequestError::RequestLine),
            StartLine::Request { .. } => {}
        }
        for name in [
            "From",
            "To",
            "Call-ID",
            "CSeq",
            "Max-Forwards",
            "Content-Length",
            "Content-Type",
        ] {
            if self.header_count(name) > 1 {
                return Err(RequestError::Duplicate(name));
            }
        }
        if self.top_via().is_none() {
            return Err(RequestError::Missing("Via"));
        }
        for name in ["From", "To"] {
            if self.header(name).is_none() {
                return Err(RequestError::Missing(name));
            }
        }
        if self.call_id().is_none() {
            return Err(RequestError::Missing("Call-ID"));
        }
        if self.cseq().is_none() {
            return Err(RequestError::Missing("CSeq"));
        }
        let vias_ok = self
            .headers
            .iter()
            .filter(|h| h.name == "Via")
            .all(|h| list_elements(&h.value).all(via_ok));
        if !vias_ok {
            return Err(RequestError::Malformed("Via"));
        }
        for name in ["From", "To"] {
            if !self.header(name).is_some_and(address_ok) {
                return Err(RequestError::Malformed(name));
            }
        }
        let contacts_ok = self
            .headers
            .iter()
            .filter(|h| h.name == "Contact")
            .all(|h| h.value.trim() == "*" || list_elements(&h.value).all(address_ok));
        if !contacts_ok {
            return Err(RequestError::Malformed("Contact"));
        }
        Ok(())
    }

    /// Whether the CSeq method is the request's method (RFC 3261 8.1.1.5; RFC 4475 3.1.2.17).
    pub fn cseq_matches(&self) -> bool {
        matches!((self.cseq(), self.method()), (Some(cseq), Some(method)) if &cseq.method == method)
    }

    /// Whether a response can be addressed at all: it needs the topmost Via (the response goes
    /// back to the request's source; RFC 3261 18.2.2). Whatever of From, To, Call-ID and CSeq
    /// the request has is copied too, so even a request missing some of them (RFC 4475
    /// 3.3.1) learns why it failed.
    pub fn answerable(&self) -> bool {
        self.top_via().is_some()
    }
}

/// The double quote of quoted strings (RFC 3261 25.1), named once.
const DQUOTE: char = '\u{22}';

/// Splits `value` at each `sep` outside quoted strings (with their `\\` escapes) and `<...>`,
/// keeping empty pieces.
fn split_unquoted(value: &str, sep: char) -> Vec<&str> {
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
            DQUOTE => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            c if c == sep && !quoted && !angle => {
                parts.push(&value[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

/// Splits a header value at top-level commas (not inside quotes or `<...>`).
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    split_unquoted(value, ',')
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// The elements of a comma-separated header value, trimmed, empty ones kept (they make the
/// value invalid, RFC 4475 3.1.2.1).
fn list_elements(value: &str) -> impl Iterator<Item = &str> {
    split_unquoted(value, ',').into_iter().map(str::trim)
}

/// Whether `s` starts with a complete quoted string; returns the index just past its closing
/// quote. A quoted pair may escape any character but CR and LF (RFC 3261 25.1).
fn quoted_string_end(s: &str) -> Option<usize> {
    let mut chars = s.char_indices();
    if chars.next()?.1 != DQUOTE {
        return None;
    }
    while let Some((i, c)) = chars.next() {
        match c {
            DQUOTE => return Some(i + 1),
            '\\' => match chars.next() {
                Some((_, '\r' | '\n')) | None => return None,
                Some(_) => {}
            },
            _ => {}
        }
    }
    None
}

/// Whether `params` (the text after an address or a Via's sent-by) is a run of
/// `;name[=value]` parameters: no empty parameter, a token name, a token, host or quoted
/// string value (RFC 3261 `generic-param`).
fn params_ok(params: &str) -> bool {
    let params = params.trim();
    if params.is_empty() {
        return true;
    }
    let Some(params) = params.strip_prefix(';') else {
        return false;
    };
    split_unquoted(params, ';').into_iter().all(|p| {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (p.trim(), None),
        };
        let name_ok = !name.is_empty() && name.bytes().all(is_token_byte);
        let value_ok = match value {
            None => true,
            Some(v) if v.starts_with(DQUOTE) => quoted_string_end(v) == Some(v.len()),
            Some(v) => !v.is_empty() && v.bytes().all(|b| is_token_byte(b) || b"[]:".contains(&b)),
        };
        name_ok && value_ok
    })
}

/// Whether a URI inside an address has a scheme and no whitespace or delimiters.
fn address_uri_ok(uri: &str) -> bool {
    uri_scheme(uri).is_some()
        && uri
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>\"".contains(&b))
}

/// Whether `value` is a From, To or Contact value (RFC 3261 20.10, 20.20, 20.39): a
/// name-addr (an optional display name of tokens or one quoted string, then `<URI>`) or an
/// addr-spec, then header parameters. An addr-spec may not hold `?` or `,` (RFC 4475
/// 3.1.2.13: those need `<>`). Liberal where RFC 4475 allows it: no space needed between a
/// display name and `<` (3.1.2 `lwsdisp`), and spaces just inside `<>` are ignored
/// (`badaspec`); any URI scheme is accepted (3.3.4).
fn address_ok(value: &str) -> bool {
    let value = value.trim();
    let (uri, params) = if let Some(end) = value.starts_with('"').then(|| quoted_string_end(value))
    {
        let Some(end) = end else {
            return false; // an unterminated quoted display name (RFC 4475 3.1.2.6)
        };
        let Some(rest) = value[end..].trim_start().strip_prefix('<') else {
            return false;
        };
        let Some((uri, params)) = rest.split_once('>') else {
            return false;
        };
        (uri.trim(), params)
    } else if let Some(lt) = value.find('<') {
        let display = &value[..lt];
        // Unquoted: tokens and spaces (UTF-8 letters let through, as UAs send names so).
        if !display
            .bytes()
            .all(|b| is_token_byte(b) || b == b' ' || b == b'\t' || b >= 0x80)
        {
            return false; // a display name with non-token characters, unquoted (3.1.2.15)
        }
        let Some((uri, params)) = value[lt + 1..].split_once('>') else {
            return false;
        };
        (uri.trim(), params)
    } else {
        let (uri, params) = match value.find(';') {
            Some(i) => (&value[..i], &value[i..]),
            None => (value, ""),
        };
        let uri = uri.trim();
        if uri.contains(['?', ',']) {
            return false;
        }
        (uri, params)
    };
    address_uri_ok(uri) && params_ok(params)
}

/// Whether `value` is one Via value (RFC 3261 20.42): `SIP/2.0/transport sent-by` (spaces
/// allowed around the slashes) and well-formed parameters.
fn via_ok(value: &str) -> bool {
    let (protocol, params) = match value.find(';') {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, ""),
    };
    let mut pieces = protocol.splitn(3, '/');
    let (Some(name), Some(version), Some(rest)) = (pieces.next(), pieces.next(), pieces.next())
    else {
        return false;
    };
    let token = |t: &str| !t.is_empty() && t.bytes().all(is_token_byte);
    let mut rest = rest.split_whitespace();
    let (Some(transport), Some(sent_by), None) = (rest.next(), rest.next(), rest.next()) else {
        return false;
    };
    token(name.trim())
        && token(version.trim())
        && token(transport)
        && sent_by_of(sent_by).is_some()
        && params_ok(params)
}

/// `host[:port]` of a Via's sent-by: the host lower-cased, IPv6 in brackets; None when it
/// is not a host and an optional port.
fn sent_by_of(sent_by: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if sent_by.starts_with('[') {
        let (host, after) = sent_by.split_once(']')?;
        (format!("{host}]"), after.strip_prefix(':'))
    } else {
        match sent_by.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (sent_by.to_string(), None),
        }
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if !host_ok(bare) {
        return None;
    }
    let port = match port {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// The topmost Via's sent-by as `host:port` (port 5060, or 5061 for TLS, when absent), for
/// matching requests to server transactions (RFC 3261 17.2.3); None when unreadable.
pub fn via_sent_by(via: &str) -> Option<String> {
    let protocol = via.split(';').next()?;
    let mut pieces = protocol.splitn(3, '/');
    let rest = pieces.nth(2)?;
    let mut rest = rest.split_whitespace();
    let transport = rest.next()?;
    let (host, port) = sent_by_of(rest.next()?)?;
    let default = if transport.eq_ignore_ascii_case("TLS") {
        5061
    } else {
        5060
    };
    Some(format!("{host}:{}", port.unwrap_or(default)))
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
    /// Whether the URI has a headers component (`?name=value`).
    pub has_headers: bool,
}

/// Whether `uri` is a `sips:` URI (RFC 3261 19.1: TLS on every hop), scheme case-insensitive.
pub fn is_sips(uri: &str) -> bool {
    uri.get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("sips:"))
}

/// Whether a request to `uri` goes over TLS: a `sips:` URI, or `;transport=tls` (RFC 3261
/// 19.1.1; deprecated by RFC 5630, still what many PBXs write).
pub fn wants_tls(uri: &str) -> bool {
    is_sips(uri)
        || parse_sip_uri(uri)
            .and_then(|u| u.transport)
            .is_some_and(|t| t.eq_ignore_ascii_case("tls"))
}

/// The port of `uri` when it names none: 5061 over TLS, else 5060 (RFC 3261 19.1.2).
pub fn default_port(uri: &str) -> u16 {
    if wants_tls(uri) {
        5061
    } else {
        5060
    }
}

/// Parses `sip:user@host:port;params?headers` (also `sips:`); None when not a SIP URI. The
/// userinfo ends at the `@` (which appears nowhere else unescaped in a SIP URI), so a user
/// part may hold `;`, `?` or `/` (RFC 4475 3.1.1.2 `intmeth`, 3.1.1.9 `semiuri`).
pub fn parse_sip_uri(uri: &str) -> Option<SipUri<'_>> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let (user, rest) = match rest.find('@') {
        Some(i) => (
            Some(rest[..i].split(':').next().unwrap_or("")),
            &rest[i + 1..],
        ),
        None => (None, rest),
    };
    let (rest, has_headers) = match rest.split_once('?') {
        Some((r, _)) => (r, true),
        None => (rest, false),
    };
    let mut parts = rest.split(';');
    let hostport = parts.next()?;
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
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
        has_headers,
    })
}

/// `%HH` escapes of a URI part decoded (RFC 3261 19.1.4: `%75ser` is `user`); None when an
/// escape is malformed or the result is not printable UTF-8 (a NUL, say), in which case the
/// escaped text is the safer name.
pub fn unescape_uri_part(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.chars().any(char::is_control)).then_some(text)
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
    /// Line feeds in the current run of line breaks between messages: two make a CRLF
    /// keep-alive ping (RFC 5626 3.5.1: a double CRLF; the single CRLF pong is not one).
    breaks: u8,
    /// Pings seen and not yet taken ([`StreamFramer::take_pings`]).
    pings: u32,
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

    /// The CRLF keep-alive pings (double CRLFs between messages) seen since the last call:
    /// each is owed a single CRLF pong (RFC 5626 4.4.1). Counted by
    /// [`StreamFramer::next_message`].
    pub fn take_pings(&mut self) -> u32 {
        std::mem::take(&mut self.pings)
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
            for &b in &self.buf[..skip] {
                if b == b'\n' {
                    self.breaks += 1;
                    if self.breaks == 2 {
                        self.pings = self.pings.saturating_add(1);
                        self.breaks = 0;
                    }
                }
            }
            if skip < self.buf.len() {
                // A message starts: the run of line breaks is over.
                self.breaks = 0;
            }
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
    fn a_request_line_ending_in_multibyte_text_is_an_error_not_a_panic() {
        // Found by the in-suite fuzz replay: the version check sliced inside a character.
        for line in [
            "INVITE x sip\u{226}\r\n\r\n",
            "A \u{e9}\u{e9}\u{e9}\r\n\r\n",
            "A b SIP\u{e9}x\r\n\r\n",
        ] {
            let _ = SipMessage::parse(line.as_bytes());
        }
    }

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

    /// RFC 5626 keep-alive on a stream: a double CRLF (in any pieces) is a ping; a single
    /// CRLF (a pong) and the line breaks inside a message are not.
    #[test]
    fn stream_framer_counts_crlf_pings() {
        let one =
            b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1;branch=z9hG4bK1\r\n\
                    From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: x\r\n\
                    CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        let mut f = StreamFramer::new();
        f.push(b"\r\n\r\n");
        assert_eq!(f.next_message(), Ok(None));
        assert_eq!(f.take_pings(), 1);
        assert_eq!(f.take_pings(), 0);
        // A pong alone, then a ping in two pieces.
        f.push(b"\r\n");
        assert_eq!(f.next_message(), Ok(None));
        assert_eq!(f.take_pings(), 0);
        f.push(b"\r\n\r");
        assert_eq!(f.next_message(), Ok(None));
        assert_eq!(
            f.take_pings(),
            1,
            "the pong's CRLF and the next one make a ping"
        );
        f.push(b"\n");
        assert_eq!(f.next_message(), Ok(None));
        assert_eq!(f.take_pings(), 0);
        // A message (its own blank line is no ping), a ping after it, a pong before the next.
        let mut f = StreamFramer::new();
        let mut all = one.to_vec();
        all.extend_from_slice(b"\r\n\r\n");
        all.extend_from_slice(b"\r\n");
        all.extend_from_slice(one);
        f.push(&all);
        assert!(f.next_message().unwrap().is_some());
        assert_eq!(f.take_pings(), 0);
        assert!(f.next_message().unwrap().is_some());
        assert_eq!(f.take_pings(), 1);
        assert_eq!(f.next_message(), Ok(None));
        assert_eq!(f.take_pings(), 0);
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

    fn torture(name: &str) -> SipMessage {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/rfc4475")
            .join(format!("{name}.dat"));
        let bytes = std::fs::read(&path).unwrap();
        SipMessage::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn malformed_request_lines_parse_as_bad_requests() {
        let line = |l: &str| parse_start_line(l).unwrap();
        for (l, error) in [
            ("INVITE  sip:a@b  SIP/2.0", RequestLineError::Syntax),
            ("OPTIONS sip:a@b SIP/2.0  ", RequestLineError::Syntax),
            ("INVITE sip:a@b; lr SIP/2.0", RequestLineError::Syntax),
            ("OPTIONS sip:a@b SIP/7.0", RequestLineError::Version),
            ("INVITE <sip:a@b> SIP/2.0", RequestLineError::Uri),
            (
                "INVITE sip:a@b?Route=%3Csip:c%3E SIP/2.0",
                RequestLineError::Uri,
            ),
            ("INVITE sip:a@b:port SIP/2.0", RequestLineError::Uri),
            ("INVITE nocolon SIP/2.0", RequestLineError::Uri),
        ] {
            match line(l) {
                StartLine::BadRequest {
                    line,
                    error: e,
                    method,
                } => {
                    assert_eq!((line.as_str(), e), (l, error));
                    assert!(method.is_some(), "{l}");
                }
                other => panic!("{l}: {other:?}"),
            }
        }
        // Printed back verbatim, so a stream frame reaches the endpoint as it came.
        let m = torture("lwsstart");
        assert_eq!(m.validate_request(), Err(RequestError::RequestLine));
        assert_eq!(SipMessage::parse(&m.to_bytes()).unwrap().start, m.start);
        assert_eq!(
            torture("badvers")
                .validate_request()
                .map_err(|e| e.status()),
            Err(505)
        );
        // Not a request line at all, and bad status lines, stay errors.
        for l in [
            "HELLO",
            "NOT SIP AT ALL",
            "SIP/2.0 4294967301 big",
            "SIP/2.0 99 low",
        ] {
            assert!(parse_start_line(l).is_err(), "{l}");
        }
        // Unusual but legal: any token method, a user part with ;?/, scheme case.
        assert!(matches!(
            line("!x%Y~ sip:a;b?c/d@example.com SIP/2.0"),
            StartLine::Request { .. }
        ));
        assert!(matches!(
            line("OPTIONS nobody:opaque sip/2.0"),
            StartLine::Request { .. }
        ));
    }

    #[test]
    fn rfc4475_valid_messages_validate_and_invalid_ones_do_not() {
        for name in [
            "wsinv",
            "intmeth",
            "esc01",
            "escnull",
            "esc02",
            "lwsdisp",
            "longreq",
            "dblreq",
            "semiuri",
            "transports",
            "mpart01",
            "cparam01",
            "cparam02",
            "regescrt",
            "unksm2",
            "inv2543",
            "zeromf",
            "badbranch",
            "baddate",
            "badaspec",
            "invut",
            "sdp01",
            "bext01",
            "novelsc",
            "unkscm",
            "regaut01",
        ] {
            assert_eq!(torture(name).validate_request(), Ok(()), "{name}");
        }
        for (name, error) in [
            ("badinv01", RequestError::Malformed("Via")),
            ("quotbal", RequestError::Malformed("To")),
            ("baddn", RequestError::Malformed("From")),
            ("regbadct", RequestError::Malformed("Contact")),
            ("multi01", RequestError::Duplicate("From")),
            ("insuf", RequestError::Missing("From")),
            ("scalar02", RequestError::Missing("CSeq")),
            ("ltgtruri", RequestError::RequestUri),
            ("trws", RequestError::RequestLine),
        ] {
            assert_eq!(torture(name).validate_request(), Err(error), "{name}");
        }
        assert!(!torture("mismatch01").cseq_matches());
        // Bytes the RFC put there on purpose survive parsing.
        let m = torture("intmeth");
        assert!(m.header("To").unwrap().contains("NUL:\\\0"));
        assert_eq!(m.cseq().unwrap().seq, 139122385);
        let m = torture("wsinv");
        assert_eq!(
            m.cseq().map(|c| (c.seq, c.method)),
            Some((9, Method::Invite))
        );
        assert_eq!(m.from_tag(), Some("98asjd8"));
        assert_eq!(
            via_sent_by(m.top_via().unwrap()).as_deref(),
            Some("192.0.2.2:5060")
        );
        assert_eq!(m.header_values("Via").count(), 3);
        let semiuri = torture("semiuri");
        let u = parse_sip_uri(semiuri.request_uri().unwrap()).unwrap();
        assert_eq!(
            (u.user, u.host),
            (Some("user;par=u%40example.net"), "example.com")
        );
        assert_eq!(
            unescape_uri_part("u%40example.net").as_deref(),
            Some("u@example.net")
        );
        assert_eq!(unescape_uri_part("null-%00-null"), None);
        assert_eq!(unescape_uri_part("bad%4"), None);
    }

    #[test]
    fn content_length_must_be_one_plain_number() {
        assert_eq!(
            torture_bytes_error("mcl01"),
            ParseError::Duplicate("Content-Length")
        );
        assert!(matches!(
            torture_bytes_error("ncl"),
            ParseError::ContentLength(_)
        ));
        assert!(matches!(
            SipMessage::parse(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: +0\r\n\r\n"),
            Err(ParseError::ContentLength(_))
        ));
        // A datagram that ends after its last header line has no body.
        let m = SipMessage::parse(b"OPTIONS sip:a SIP/2.0\r\nl: 0\r\n").unwrap();
        assert_eq!(m.content_length(), Ok(Some(0)));
    }

    fn torture_bytes_error(name: &str) -> ParseError {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/rfc4475")
            .join(format!("{name}.dat"));
        SipMessage::parse(&std::fs::read(path).unwrap()).unwrap_err()
    }

    #[test]
    fn addresses_follow_the_grammar() {
        for ok in [
            "\"A \\\" B\" <sip:a@b>;tag=1",
            "caller<sip:caller@example.com>;tag=323",
            "J\u{fc}rgen M\u{fc}ller <sip:j@example.com>",
            "<sip:a@b;ob>;reg-id=1;+sip.instance=\"<urn:uuid:1-2>\"",
            "sip:+1972@gw1.example.net;unknownparam",
            "< sip:t.watson@example.org >",
        ] {
            assert!(address_ok(ok), "{ok}");
        }
        for bad in [
            "\"Mr. J. User <sip:j.user@example.com>",
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            "\"Joe\" <sip:joe@example.org>;;;;",
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "<sip:a@b",
            "<nocolon>",
            "<sip:a@b>;tag=\"open",
        ] {
            assert!(!address_ok(bad), "{bad}");
        }
        assert!(via_ok("SIP/2.0/UDP h;branch=z9hG4bK1;received=[::1];rport"));
        assert!(!via_ok("SIP/2.0/UDP 192.0.2.15;;"));
        assert!(!via_ok("SIP/2.0 h;branch=1"));
        assert!(!via_ok("SIP/2.0/UDP h extra"));
    }

    #[test]
    fn sent_by_is_normalised() {
        let s = |v: &str| via_sent_by(v);
        assert_eq!(
            s("SIP/2.0/UDP Host.Example:5070;branch=z9hG4bK1").as_deref(),
            Some("host.example:5070")
        );
        assert_eq!(s("SIP / 2.0 / TLS h;branch=1").as_deref(), Some("h:5061"));
        assert_eq!(s("SIP/2.0/TCP [::1]:5062").as_deref(), Some("[::1]:5062"));
        assert_eq!(s("SIP/2.0/UDP h:x"), None);
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
