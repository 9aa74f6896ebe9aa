//! Opening the connection of one download: TCP, then TLS with the target's rustls configuration,
//! and the mapping of handshake failures to permanent certificate errors or dropped connections.
//! It sends nothing; the request is written by the caller.

use super::{HttpTarget, Io, TransferError, dropped};

pub(super) async fn connect(target: &HttpTarget, url: &str) -> Result<Box<dyn Io>, TransferError> {
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| TransferError::HttpUnreachable {
            url: url.to_string(),
            message: format!("cannot connect: {e}"),
        })?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &target.tls else {
        return Ok(Box::new(tcp));
    };
    let name = rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|e| {
        TransferError::Tls {
            url: url.to_string(),
            reason: format!("{:?} is not a valid server name: {e}", target.host),
        }
    })?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| tls_error(url, e))?;
    Ok(Box::new(stream))
}

/// A handshake failure caused by the certificate is permanent; anything else is a dropped connection.
fn tls_error(url: &str, e: std::io::Error) -> TransferError {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert)) => TransferError::Tls {
            url: url.to_string(),
            reason: match cert {
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => {
                    "the certificate is not issued for this host name".to_string()
                }
                rustls::CertificateError::UnknownIssuer => {
                    "the certificate is signed by an unknown authority".to_string()
                }
                other => format!("invalid certificate: {other:?}"),
            },
        },
        Some(other) => TransferError::Tls {
            url: url.to_string(),
            reason: other.to_string(),
        },
        None => dropped(url, &e),
    }
}
